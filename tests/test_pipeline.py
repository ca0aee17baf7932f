"""`bandistill ban` end to end on digits, and `bandistill report` (slow: real training)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bandistill.train as train_module
from bandistill.checkpoint import load_checkpoint
from bandistill.cli.main import cli
from bandistill.run import BanOptions, ban_options, run_ban
from bandistill.report import generation_metrics
from conftest import assert_one_line_error, run_cli

FAST = dict(model="resnet-20", dataset="digits", views=2, epochs=2, batch_size=256, device="cpu")


def test_paper_convention_for_ensembles():
    labels = np.array([0, 1])
    gen0 = np.array([[0.9, 0.1], [0.9, 0.1]])  # one wrong
    ban1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    ban2 = np.array([[0.4, 0.6], [0.4, 0.6]])  # one wrong
    data = generation_metrics([gen0, ban1, ban2], labels)
    assert data["columns"] == ["baseline", "BAN-1", "BAN-2", "Ens*2", "Ens(0..2)"]
    assert data["cells"]["baseline"]["error"] == 50.0 and data["cells"]["BAN-1"]["error"] == 0.0
    # Ens*2 averages BAN-1 and BAN-2 only: [[0.5, 0.5], [0.3, 0.7]] -> NLL = -(log .5 + log .7)/2
    assert data["cells"]["Ens*2"]["nll"] == pytest.approx(-(np.log(0.5) + np.log(0.7)) / 2)
    assert data["cells"]["Ens(0..2)"]["nll"] == pytest.approx(-(np.log(1.9 / 3) + np.log(1.5 / 3)) / 2)


@pytest.mark.slow
def test_ban_runs_skips_and_regenerates_its_report(tmp_path):
    out = tmp_path / "exp"
    first = run_ban(BanOptions(generations=2, **FAST), out, progress=False)
    for name in ("gen0/model.pt", "gen2/model.pt", "cache/gen0.h5", "cache/gen1.h5", "onnx/gen2.onnx",
                 "bane.onnx", "report.md", "report.json", "report.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert "gen2.train" in first["stages_run"]
    row = first["rows"][0]
    assert row["columns"] == ["baseline", "BAN-1", "BAN-2", "Ens*2", "Ens(0..2)"]
    from bandistill.identity import lineage_chain

    chain = lineage_chain(out / "gen2" / "model.pt")  # gen2 -> gen1 -> gen0, read from gen2's file alone
    assert [link["generation"] for link in chain] == [2, 1, 0]
    assert chain[0]["cache"].endswith("cache/gen1.h5") and chain[1]["cache"].endswith("cache/gen0.h5")

    mtime = (out / "gen1" / "model.pt").stat().st_mtime_ns
    second = run_ban(BanOptions(generations=2, **FAST), out, progress=False)
    assert second["stages_run"] == [] and (out / "gen1" / "model.pt").stat().st_mtime_ns == mtime
    assert second["rows"] == first["rows"]

    for name in ("report.md", "report.json", "report.png"):
        (out / name).unlink()
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "BAN-2" in result.stdout and "seed noise" in result.stdout.replace("\n", " ")
    # the report says how many views per image the students saw against generation 0 (digits: 9 in all)
    note = "generation 0 drew 2 (about 1.9 distinct of the 9 the view policy makes); the students, from caches of --views 2, 2"
    assert note in (out / "report.md").read_text().replace("\n", " ")
    assert note in result.stdout.replace("\n", " ")
    assert json.loads((out / "report.json").read_text())["rows"] == json.loads(json.dumps(first["rows"]))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-generation digits run (copy it with :func:`copy_run` before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "exp"
    result = run_ban(BanOptions(generations=2, **FAST), out, progress=False)
    return out, result


def copy_run(finished_run, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(finished_run[0], out)
    return out


def snapshot(out):
    """Every file under ``out`` (but the lock) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != ".bandistill.lock"}


STUDENTS = ("gen1/model.pt", "gen2/model.pt")


@pytest.mark.slow
@pytest.mark.parametrize("lost, how", [("cache/gen0.h5", "deleted"), ("gen0/model.pt", "deleted"),
                                       ("cache/gen0.h5", "truncated")])
def test_a_rebuilt_input_with_the_same_content_retrains_nothing(finished_run, tmp_path, lost, how):
    """Identity by content: a cache dumped again, or model.pt rewritten from last.pt, is the same input.

    A truncated cache used to stop the re-run with 'pass --overwrite' (an option ban does not have);
    it is moved aside and dumped again."""
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    if how == "deleted":
        (out / lost).unlink()
    else:
        (out / lost).write_bytes(before[lost][: len(before[lost]) // 2])
    again = run_ban(BanOptions(generations=2, **FAST), out, progress=False)
    assert again["stages_run"] == ["gen0.dump" if "cache" in lost else "gen0.train"]
    after = snapshot(out)
    for name in STUDENTS + ("cache/gen1.h5", "onnx/gen1.onnx", "bane.onnx"):
        assert after[name] == before[name], name  # not retrained, not rewritten
    if how == "truncated":
        assert [p.stat().st_size for p in out.glob("superseded/*/cache/gen0.h5")] == [len(before[lost]) // 2]


@pytest.mark.slow
def test_a_rerun_takes_the_options_it_is_not_given_from_ban_json(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    result = run_cli("ban", "--out", out, "--json")  # used to fall back to --views 4, --epochs 200 ... and redo all
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages_run"] == []
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == \
        {k: v for k, v in before.items() if not k.startswith("report")}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    [],
    # refused before anything moves: these used to be found only after gen0/ had been deleted
    pytest.param(["--device", "cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ["--student-model", "densenet-bc-10-4", "--transfer-ends"],
])
def test_an_option_that_would_redo_finished_stages_is_refused_and_nothing_changes(finished_run, tmp_path, extra):
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    result = run_cli("ban", "--out", out, "--epochs", "1", *extra)
    if extra:
        assert_one_line_error(result, *(["GPU"] if "cuda" in extra else ["shapes differ"]))
    else:
        assert_one_line_error(result, "would redo finished stages", "epochs 2 -> 1", "gen0.train", "gen2.train",
                              "--supersede")
    assert snapshot(out) == before  # nothing deleted, moved or rewritten (ban.json included)


@pytest.mark.slow
def test_supersede_moves_the_old_outputs_aside_and_reruns(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    messages: list[str] = []
    result = run_ban(ban_options(out, {"loss": "ban"}), out, supersede=True, progress=False, log=messages.append)
    assert result["stages_run"] == ["gen1.train", "gen1.export", "gen1.dump", "gen2.train", "gen2.export", "ensemble"]
    assert load_checkpoint(out / "gen1" / "model.pt")["config"]["loss"] == "ban"
    assert json.loads((out / "ban.json").read_text())["loss"] == "ban"
    [aside] = list((out / "superseded").iterdir())
    for name in ("gen1/model.pt", "gen1/last.pt", "gen2/model.pt", "cache/gen1.h5", "onnx/gen1.onnx", "bane.onnx",
                 "evaluation.json", "ban.json", "manifest.json"):
        assert (aside / name).read_bytes() == before[name], name  # moved (or, for the records, copied) intact
    assert (out / "gen0" / "model.pt").read_bytes() == before["gen0/model.pt"]  # not superseded, not touched
    assert any("superseded" in m and "gen1" in m for m in messages), messages
    # the new run is itself finished: the same options again do nothing
    assert run_ban(ban_options(out, {}), out, progress=False)["stages_run"] == []


@pytest.mark.slow
def test_repeats_on_a_finished_single_seed_run_reuse_its_chain(finished_run, tmp_path):
    """--repeats 2 used to train seed-0/ (a copy of the root chain) and seed-1000/, and report neither."""
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    result = run_ban(ban_options(out, {"repeats": 2, "generations": 1}), out, supersede=True, progress=False)
    assert (out / "seed-0" / "gen1" / "model.pt").read_bytes() == before["gen1/model.pt"]  # moved, not retrained
    assert (out / "seed-1000" / "gen1" / "model.pt").is_file()
    cell = result["rows"][0]["cells"]["baseline"]["error"]
    assert len(cell["values"]) == 2  # both seeds are reported, not "single seed"
    assert result["stages_run"].count("gen0.train") == 1  # seed 1000's only


@pytest.mark.slow
def test_changed_option_reruns_from_the_stage_it_affects(tmp_path):
    out, messages = tmp_path / "exp", []
    run_ban(BanOptions(generations=1, **FAST), out, progress=False)
    gen0 = (out / "gen0" / "model.pt").stat().st_mtime_ns
    again = run_ban(BanOptions(generations=1, loss="ban", **FAST), out, supersede=True, progress=False,
                    log=messages.append)
    assert again["stages_run"] == ["gen1.train", "gen1.export", "ensemble"]
    assert (out / "gen0" / "model.pt").stat().st_mtime_ns == gen0
    assert any("gen1.train" in m and "superseded" in m for m in messages), messages
    assert load_checkpoint(out / "gen1" / "model.pt")["config"]["loss"] == "ban"


@pytest.mark.slow
def test_killed_during_generation_1_resumes_it(tmp_path, monkeypatch):
    opts = dict(FAST, epochs=3)
    whole = run_ban(BanOptions(generations=1, **opts), tmp_path / "a", progress=False)

    real_save, saves = train_module.save_checkpoint, []

    def die_in_gen1(obj, path):
        real_save(obj, path)
        if "gen1" in str(path):
            saves.append(path)
            if len(saves) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", die_in_gen1)
    with pytest.raises(KeyboardInterrupt):
        run_ban(BanOptions(generations=1, **opts), tmp_path / "b", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert (tmp_path / "b" / "gen1" / "last.pt").exists() and not (tmp_path / "b" / "gen1" / "model.pt").exists()

    messages: list[str] = []
    resumed = run_ban(BanOptions(generations=1, **opts), tmp_path / "b", progress=False, log=messages.append)
    assert "gen0.train" not in resumed["stages_run"] and "gen1.train" in resumed["stages_run"]
    assert any("gen1.train: resuming" in m for m in messages), messages
    history = [json.loads(x) for x in open(tmp_path / "b" / "gen1" / "metrics.jsonl")]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    wa = load_checkpoint(tmp_path / "a" / "gen1" / "model.pt")["state_dict"]
    wb = load_checkpoint(tmp_path / "b" / "gen1" / "model.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["rows"][0]["cells"] == whole["rows"][0]["cells"]


@pytest.mark.slow
def test_repeats_report_mean_and_std(tmp_path):
    result = CliRunner().invoke(cli, ["ban", "--model", "resnet-20", "--dataset", "digits", "--generations", "1",
                                      "--views", "2", "--epochs", "1", "--batch-size", "256", "--repeats", "2",
                                      "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cell = data["rows"][0]["cells"]["baseline"]["error"]
    assert len(cell["values"]) == 2 and cell["std"] is not None
    assert (tmp_path / "r" / "seed-0" / "bane.onnx").exists() and (tmp_path / "r" / "seed-1000" / "bane.onnx").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--generations", "0"], "--generations must be at least 1"),
    (["--views", "0"], "--views must be a positive integer, 'epochs' or 'all'"),
    (["--views", "some"], "--views must be a positive integer"),
    (["--model", "wrn-27-10"], "wrn-27-10"),
    (["--transfer-ends"], "--transfer-ends needs --student-model"),
    # checked before any stage runs (they used to surface only in gen1.train or gen0.export, after a
    # re-run had already cleared the finished stages the changed value would re-run)
    (["--temperature", "-1"], "--temperature must be between 0.01 and 100"),
    (["--alpha", "2"], "--alpha must be between 0 and 1"),
    (["--opset", "3"], "--opset 3 is out of range"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--top-k", "10"], "--top-k must be 0 (full rows) or between 1 and 9 for 10 classes"),
])
def test_ban_refuses_bad_options(tmp_path, args, fragment):
    base = {"--model": "resnet-20", "--dataset": "digits", "--out": str(tmp_path / "x")}
    argv = ["ban"]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    result = CliRunner().invoke(cli, argv + args)
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "x").exists()  # refused before any stage ran


@pytest.mark.parametrize("content", ['{"columns": ["baseline"], "cel', "{}", "[1, 2]"])
def test_report_of_a_damaged_evaluation_is_one_line(tmp_path, content):
    (tmp_path / "evaluation.json").write_text(content)
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "is damaged" in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "evaluation.json").read_text() == content


def test_report_of_a_folder_without_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished born-again run" in result.output


@pytest.mark.slow
def test_cross_architecture_students_get_the_teachers_ends(tmp_path):
    out = tmp_path / "x"
    result = run_ban(BanOptions(generations=1, student_model="resnet-32", transfer_ends=True, **dict(FAST, epochs=1)),
                     out, progress=False)
    assert result["rows"][0]["network"] == "resnet-20 -> resnet-32"
    student = load_checkpoint(out / "gen1" / "model.pt")
    teacher = load_checkpoint(out / "gen0" / "model.pt")
    assert student["model"]["name"] == "resnet-32" and student["transferred"] == ["stem", "classifier"]
    assert torch.equal(student["state_dict"]["classifier.weight"], teacher["state_dict"]["classifier.weight"])


@pytest.mark.parametrize("bad", [{"epochs": "1"}, {"generations": 2.5}, {"seed": [1]}, {"transfer_ends": "yes"},
                                 {"views": 1.5}, {"model": 3}, {"lr": "0.1"}])
def test_a_ban_json_with_a_wrongly_typed_value_is_one_line(tmp_path, bad):
    """`"epochs": "1"` in ban.json was a TypeError traceback (exit 1); `report` too."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "ban.json").write_text(json.dumps({"model": "resnet-20", "dataset": "digits", **bad}))
    [(name, value)] = bad.items()
    result = run_cli("ban", "--out", out)
    assert_one_line_error(result, "ban.json is damaged", f"{name} is {value!r}")
    assert sorted(p.name for p in out.iterdir()) == ["ban.json"]
    assert_one_line_error(run_cli("report", out), "ban.json is damaged", f"{name} is {value!r}")


def test_a_report_with_nan_cells_exits_1_and_writes_nothing(tmp_path):
    """`report` printed NaN cells and exited 0."""
    labels = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    data = {"network": "resnet-20", "parameters": 1000, "seed": 0, **generation_metrics([p, p], labels)}
    (tmp_path / "evaluation.json").write_text(json.dumps(data))
    assert run_cli("report", tmp_path).exit_code == 0  # the same evaluation, finite: a report
    data["cells"]["BAN-1"]["nll"] = float("nan")
    (tmp_path / "evaluation.json").write_text(json.dumps(data))
    for name in ("report.md", "report.json", "report.png"):
        (tmp_path / name).unlink()
    assert_one_line_error(run_cli("report", tmp_path), "not finite", "BAN-1 nll", code=1)
    assert not list(tmp_path.glob("report*"))


@pytest.mark.slow
def test_a_run_recorded_before_top_k_and_epochs_is_not_refused(finished_run, tmp_path):
    """A manifest from before the dump signature gained top_k and epochs: every re-run was refused with an
    empty reason, and --supersede redid every student."""
    out = copy_run(finished_run, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, rec in manifest["stages"].items():
        if name.endswith(".dump"):
            assert rec["signature"].pop("top_k") is None and rec["signature"].pop("epochs") is None
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    assert run_ban(ban_options(out, {}), out, progress=False)["stages_run"] == []
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == \
        {k: v for k, v in before.items() if not k.startswith("report")}


@pytest.mark.slow
def test_finishing_an_interrupted_repair_needs_no_supersede(finished_run, tmp_path, monkeypatch):
    """gen1/ deleted, then the re-run killed while gen1 retrained: gen1.train stayed "running" with later stages
    done, the next plain re-run refused ("would redo finished stages") and --supersede retrained gen2 too."""
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    shutil.rmtree(out / "gen1")
    real_save = train_module.save_checkpoint

    def killed_in_gen1(obj, path):
        real_save(obj, path)
        if "gen1" in str(path) and path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", killed_in_gen1)
    with pytest.raises(KeyboardInterrupt):
        run_ban(ban_options(out, {}), out, progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert json.loads((out / "manifest.json").read_text())["stages"]["gen1.train"]["status"] == "running"

    again = run_ban(ban_options(out, {}), out, progress=False)  # no --supersede
    assert again["stages_run"] == ["gen1.train"]
    after = snapshot(out)
    for name in ("gen2/model.pt", "cache/gen1.h5", "onnx/gen1.onnx", "onnx/gen2.onnx", "bane.onnx", "evaluation.json"):
        assert after[name] == before[name], name  # nothing after gen1 was redone
    from bandistill.identity import checkpoint_identity

    assert checkpoint_identity(load_checkpoint(out / "gen1" / "model.pt")) == \
        checkpoint_identity(load_checkpoint(finished_run[0] / "gen1" / "model.pt"))  # gen1 came back the same
    asides = list((out / "superseded").iterdir()) if (out / "superseded").exists() else []
    moved = {p.relative_to(aside).parts[0] for aside in asides for p in aside.rglob("*") if p.is_file()}
    assert moved <= {"report.md", "report.json", "report.png", "ban.json", "manifest.json"}, moved  # no stage's output


@pytest.mark.slow
def test_a_moved_run_folder_re_exports_the_same_bytes(finished_run, tmp_path):
    """After moving a run folder, a deleted onnx/gen1.onnx was re-exported with other bytes (the absolute
    checkpoint path in its metadata) and the ensemble stage was then refused mid-run."""
    out = copy_run(finished_run, tmp_path)  # another folder than the one it was made in
    before = snapshot(out)
    (out / "onnx" / "gen1.onnx").unlink()
    again = run_ban(ban_options(out, {}), out, progress=False)
    assert again["stages_run"] == ["gen1.export"]
    after = snapshot(out)
    assert after["onnx/gen1.onnx"] == before["onnx/gen1.onnx"] and after["bane.onnx"] == before["bane.onnx"]
