"""``ban --variants``, ``--bane-teacher`` and a chain that grows, end to end on digits.

Finished work is never lost: adding a variant trains only it, raising ``--generations``
trains only the new generations, and the ensemble and report they change are moved aside
(every earlier file is unchanged on disk or found, byte for byte, under ``superseded/``).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from bandistill.checkpoint import load_checkpoint
from bandistill.run import BanOptions, ban_options, build_report, run_ban
from conftest import assert_one_line_error, run_cli

FAST = dict(model="resnet-20", dataset="digits", views=2, epochs=2, batch_size=256, device="cpu")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_generation(tmp_path_factory):
    """A finished one-generation digits run taught by the BANE from generation 2 on (copy before changing)."""
    out = tmp_path_factory.mktemp("grow") / "exp"
    run_ban(BanOptions(generations=1, bane_teacher=True, **FAST), out, progress=False)
    return out


def hashes(out):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".bandistill.lock"}


def assert_nothing_lost(before: dict[str, str], out) -> None:
    """Every earlier file is unchanged where it was, or moved intact under superseded/."""
    after = hashes(out)
    aside = {k.split("/", 2)[2]: v for k, v in after.items() if k.startswith("superseded/")}
    for name, digest in before.items():
        if name in ("ban.json", "manifest.json"):  # records: rewritten, their old copies kept aside
            assert aside.get(name) == digest, name
            continue
        assert after.get(name) == digest or aside.get(name) == digest, name


def test_raising_generations_trains_only_the_new_ones_and_moves_the_old_ensemble_aside(one_generation, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(one_generation, out)
    before = hashes(out)
    messages: list[str] = []
    result = run_ban(ban_options(out, {"generations": 2}), out, progress=False, log=messages.append)  # no --supersede
    assert result["stages_run"] == ["gen1.dump", "gen2.train", "gen2.export", "ensemble"]
    assert_nothing_lost(before, out)
    for name in ("evaluation.json", "bane.onnx", "report.md", "report.json", "report.png"):
        assert before[name] in {v for k, v in hashes(out).items() if k.startswith("superseded/")}, name
    assert any("ensemble superseded" in m for m in messages), messages
    assert result["rows"][0]["columns"] == ["baseline", "BAN-1", "BAN-2", "Ens*2", "Ens(0..2)"]

    # generation 2 learned from the average of generations 0 and 1's caches, and says so
    teacher = load_checkpoint(out / "gen2" / "model.pt")["teacher"]
    assert teacher["ensemble_teacher"] and teacher["teacher_generations"] == [0, 1]
    assert [m["cache"].rsplit("/", 2)[-2:] for m in teacher["members"]] == [["cache", "gen0.h5"], ["cache", "gen1.h5"]]
    report = (out / "report.md").read_text()
    assert "taught by the BANE" in report and "average (probs)" in report
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["taught_by"] == {"bane": True, "average": "probs"}
    assert set(evaluation["providers"]) == {"baseline", "BAN-1", "BAN-2"}
    assert evaluation["providers"]["BAN-2"] in ("cpu", "cuda")
    assert f"evaluated by onnxruntime on the {evaluation['providers']['BAN-2']} provider" in report

    # lowering it again is refused, and nothing moves
    before = hashes(out)
    refused = run_cli("ban", "--out", out, "--generations", "1")
    assert_one_line_error(refused, "--generations 1 is lower than the 2 generations", "--supersede")
    assert hashes(out) == before


def test_a_variant_added_to_a_finished_run_trains_only_that_variant(one_generation, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(one_generation, out)
    before = hashes(out)
    first = run_ban(ban_options(out, {"variants": "ban+l,ban"}), out, progress=False)
    assert first["stages_run"] == ["gen1[ban].train", "gen1[ban].export", "ensemble"]  # gen1 is ban+l's student
    assert_nothing_lost(before, out)
    before = hashes(out)
    second = run_ban(ban_options(out, {"variants": "ban+l,ban,kd:T=4"}), out, progress=False)
    assert second["stages_run"] == ["gen1[kd:T=4].train", "gen1[kd:T=4].export", "ensemble"]
    assert_nothing_lost(before, out)
    assert load_checkpoint(out / "gen1-kd-T4" / "model.pt")["config"]["temperature"] == 4.0
    rows = second["variants"]["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "ban+l", "ban", "kd:T=4"] and rows[1]["chain"]
    report = (out / "report.md").read_text()
    assert "one student per variant" in report and "| kd:T=4 |" in report
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["variants"]["providers"]) == {"ban+l", "ban", "kd:T=4"}
    printed = run_cli("report", out)
    assert printed.exit_code == 0 and "kd:T=4" in printed.stdout and "one student per variant" in printed.stdout
    # the same options again: nothing to do
    assert run_ban(ban_options(out, {}), out, progress=False)["stages_run"] == []


def test_a_collapsed_student_is_named_in_the_report(one_generation, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(one_generation, out)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["collapse"]["BAN-1"]["collapsed"] is False  # recorded for every generation
    evaluation["collapse"]["BAN-1"] = {"collapsed": True, "why": "97% of its test predictions are class '3'"}
    (out / "evaluation.json").write_text(json.dumps(evaluation))
    report = build_report(out)
    assert any("COLLAPSED: BAN-1 of seed 0: 97% of its test predictions" in n for n in report["notes"])
    assert "COLLAPSED: BAN-1" in (out / "report.md").read_text()


def test_variants_options_are_checked(tmp_path):
    result = run_cli("ban", "--model", "resnet-20", "--dataset", "digits", "--variants", "ban,xyz", "--out",
                     tmp_path / "x")
    assert_one_line_error(result, "--variants item 'xyz'")
    result = run_cli("ban", "--model", "resnet-20", "--dataset", "digits", "--variants", "ban,kd", "--loss", "kd",
                     "--out", tmp_path / "x")
    assert_one_line_error(result, "--loss and --variants")
    result = run_cli("ban", "--model", "resnet-20", "--dataset", "digits", "--variants", "ban,kd", "--chain-from",
                     "cwtm", "--out", tmp_path / "x")
    assert_one_line_error(result, "--chain-from cwtm is not one of --variants")
    assert not (tmp_path / "x").exists()
