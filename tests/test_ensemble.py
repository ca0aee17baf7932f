"""Tests for ``bandistill ensemble``: real exported generations, real onnxruntime sessions.

Two generations are made once per session: the shared 2-epoch digits run (gen0) and a
second run with another seed whose checkpoint is marked generation 1 (a stand-in for a
student, so these tests do not depend on the logit cache).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.cli.main import cli
from bandistill.data import ImageDataset, load_dataset
from bandistill.bane import combine
from bandistill.cli.paths import resolve_onnx_paths
from bandistill.errors import UserError, VerificationError
from bandistill.metrics import softmax
from bandistill.models import build_model
from bandistill.onnx.ensemble import evaluate_ensemble
from bandistill.onnx.export import export_checkpoint
from bandistill.onnx.members import load_members, member_probabilities
from bandistill.onnx.merge import save_merged_onnx
from bandistill.onnx.meta import read_metadata, set_metadata
from bandistill.onnx.runtime import create_session, run_batched


def _plain(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}


@pytest.fixture(scope="session")
def gens(digits_gen0, digits, tmp_path_factory) -> dict:
    """``{"dir", "gen0", "gen1", "acc0", "acc1"}``: two exported generations in one folder."""
    from bandistill.train import TrainConfig, train

    root = tmp_path_factory.mktemp("bane")
    res1 = train(TrainConfig(model="resnet-20", dataset="digits", epochs=2, seed=1, device="cpu"),
                 root / "runs" / "gen1", progress=False)
    ckpt = load_checkpoint(res1["checkpoint"])
    ckpt["generation"] = 1
    save_checkpoint(_plain(ckpt), res1["checkpoint"])
    onnx_dir = root / "onnx"
    export_checkpoint(digits_gen0["checkpoint"], onnx_dir / "gen0.onnx", dataset=digits)
    export_checkpoint(res1["checkpoint"], onnx_dir / "gen1.onnx", dataset=digits)
    return {"dir": onnx_dir, "gen0": onnx_dir / "gen0.onnx", "gen1": onnx_dir / "gen1.onnx",
            "acc0": digits_gen0["test_accuracy"], "acc1": res1["test_accuracy"],
            "ckpt0": Path(digits_gen0["checkpoint"])}


def _copy_with_metadata(src: Path, dst: Path, **values) -> Path:
    model = onnx.load(str(src))
    set_metadata(model, values)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="session")
def odd_models(gens, digits, tmp_path_factory) -> dict:
    """Real exports that must be refused next to the digits generations."""
    root = tmp_path_factory.mktemp("odd")
    base = load_checkpoint(gens["ckpt0"])
    # 5 classes, same images
    five = _plain(base)
    five["model"] = {**base["model"], "num_classes": 5}
    five["state_dict"] = build_model("resnet-20", 5, 1).state_dict()
    five["dataset"] = {**base["dataset"], "num_classes": 5, "classes": [str(i) for i in range(5)]}
    save_checkpoint(five, root / "five.pt")
    # 3-channel images
    rgb = _plain(base)
    rgb["model"] = {**base["model"], "in_channels": 3}
    rgb["state_dict"] = build_model("resnet-20", 10, 3).state_dict()
    rgb["dataset"] = {**base["dataset"], "image_shape": [3, 8, 8]}
    rgb["normalization"] = {"mean": base["normalization"]["mean"] * 3, "std": base["normalization"]["std"] * 3}
    save_checkpoint(rgb, root / "rgb.pt")
    ds_rgb = replace(digits, train_images=digits.train_images.repeat(1, 3, 1, 1),
                     test_images=digits.test_images.repeat(1, 3, 1, 1), fingerprint="")
    out = {
        "five": root / "five.onnx",
        "rgb": root / "rgb.onnx",
        "other_data": _copy_with_metadata(gens["gen1"], root / "other" / "gen1.onnx", dataset_fingerprint="0123456789abcdef"),
    }
    export_checkpoint(root / "five.pt", out["five"], exporter="torchscript", dataset=digits)
    export_checkpoint(root / "rgb.pt", out["rgb"], exporter="torchscript", dataset=ds_rgb)
    return out


def _separate_probs(paths, images) -> list[np.ndarray]:
    return [softmax(run_batched(create_session(p, "cpu"), images)) for p in paths]


# -- ordering and globs ----------------------------------------------------------------------------
def test_members_ordered_by_generation_then_name(gens, tmp_path) -> None:
    # File names sort the other way round from the generations.
    a = shutil.copy(gens["gen1"], tmp_path / "a_student.onnx")
    z = shutil.copy(gens["gen0"], tmp_path / "z_teacher.onnx")
    b = tmp_path / "b_student.onnx"  # another generation-1 file (identical copies are refused as one model twice)
    import onnx

    proto = onnx.load(gens["gen1"])
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "another seed"})
    onnx.save(proto, b)
    members = load_members(resolve_onnx_paths([str(tmp_path / "*.onnx")]))
    assert [m.name for m in members] == ["z_teacher.onnx", "a_student.onnx", "b_student.onnx"]
    assert [m.generation for m in members] == [0, 1, 1]
    # duplicates collapse, folders expand
    assert resolve_onnx_paths([a, a, z]) == [Path(a), Path(z)]
    assert len(resolve_onnx_paths([tmp_path])) == 3
    del b


def test_unquoted_shell_glob_works_as_typed(gens) -> None:
    """``--onnx dir/gen*.onnx`` expanded by a real shell into several paths after one --onnx."""
    exe = Path(sys.executable).parent / "bandistill"
    prog = shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(sys.executable)} -m bandistill.cli.main"
    command = f"{prog} ensemble --onnx {shlex.quote(str(gens['dir']))}/gen*.onnx --dataset digits --json"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [m["name"] for m in data["members"]] == ["gen0.onnx", "gen1.onnx"]
    assert data["ensemble"]["members"] == 2 and data["provider"] in ("cpu", "cuda")
    if not torch.cuda.is_available():  # onnxruntime-gpu on a CPU-only machine: not a word about CUDA
        assert "CUDA" not in proc.stderr and "[E:" not in proc.stderr, proc.stderr


def test_quoted_glob_and_repeated_onnx_agree(gens) -> None:
    runner = CliRunner()
    quoted = runner.invoke(cli, ["ensemble", "--onnx", str(gens["dir"] / "gen*.onnx"), "--json"])
    repeated = runner.invoke(cli, ["ensemble", "--onnx", str(gens["gen1"]), "--onnx", str(gens["gen0"]), "--json"])
    assert quoted.exit_code == 0 and repeated.exit_code == 0, quoted.output + repeated.output
    q, r = json.loads(quoted.stdout), json.loads(repeated.stdout)
    assert q["ensemble"] == r["ensemble"]
    assert [m["name"] for m in r["members"]] == ["gen0.onnx", "gen1.onnx"]  # generation order, not typed order


# -- the figures ----------------------------------------------------------------------------------
def test_members_match_train_and_ensemble_is_the_average(gens, digits) -> None:
    result = evaluate_ensemble([gens["gen0"], gens["gen1"]], "digits", return_probs=True)
    n = result["samples"]
    assert n == digits.test_labels.numel() and result["split"] == "test"
    for row, acc in zip(result["members"], (gens["acc0"], gens["acc1"])):
        assert abs(row["accuracy"] - acc) * n <= 1.0  # what `train` reported, to one test sample
        assert set(row) >= {"error", "nll", "ece"}
    separate = _separate_probs([gens["gen0"], gens["gen1"]], digits.test_images)
    np.testing.assert_allclose(result["probs"], np.mean(separate, axis=0), atol=1e-6)
    labels = digits.test_labels.numpy()
    expected_nll = -np.log(np.mean(separate, axis=0)[np.arange(n), labels]).mean()
    assert result["ensemble"]["nll"] == pytest.approx(expected_nll, rel=1e-5)
    assert result["prefixes"][-1]["error"] == result["ensemble"]["error"]
    # logits averaging: softmax of the mean logit
    lg = evaluate_ensemble([gens["gen0"], gens["gen1"]], "digits", average="logits", return_probs=True)
    logits = [run_batched(create_session(p, "cpu"), digits.test_images) for p in (gens["gen0"], gens["gen1"])]
    np.testing.assert_allclose(lg["probs"], softmax(np.mean(logits, axis=0)), atol=1e-6)


def test_every_prefix_is_reported(gens, tmp_path) -> None:
    third = _copy_with_metadata(gens["gen1"], tmp_path / "gen2.onnx", generation="2")
    res = CliRunner().invoke(cli, ["ensemble", "--onnx", str(gens["gen0"]), str(gens["gen1"]), str(third),
                                   "--json", "--predictions", str(tmp_path / "p.npz")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [p["members"] for p in data["prefixes"]] == [2, 3]
    assert data["prefixes"][0]["names"] == ["gen0.onnx", "gen1.onnx"]
    assert [(e["name"], e["names"]) for e in data["ensembles"]] == [
        ("Ens*2", ["gen1.onnx", "gen2.onnx"]),  # the paper's: BAN-1 and BAN-2, without the teacher
        ("Ens(0..1)", ["gen0.onnx", "gen1.onnx"]),
        ("Ens(0..2)", ["gen0.onnx", "gen1.onnx", "gen2.onnx"]),
    ]
    assert data["ensemble"]["members"] == 3 and data["ensemble"]["label"] == "BANE (Ens(0..2))"
    saved = np.load(tmp_path / "p.npz")
    assert saved["probs"].shape == (data["samples"], 10)
    assert float((saved["predictions"] == saved["labels"]).mean()) == pytest.approx(data["ensemble"]["accuracy"])
    table = CliRunner().invoke(cli, ["ensemble", "--onnx", str(gens["gen0"]), str(gens["gen1"]), str(third)])
    assert table.exit_code == 0, table.output
    for name in ("Ens*2", "Ens(0..1)", "BANE (Ens(0..2))", "Ens*k averages BAN-1 .. BAN-k"):
        assert name in table.output, table.output
    # members that are not one chain keep positional names
    other_gen1 = _copy_with_metadata(gens["gen1"], tmp_path / "b" / "gen1b.onnx", note="another seed")
    repeat = CliRunner().invoke(cli, ["ensemble", "--onnx", str(gens["gen0"]), str(gens["gen1"]), str(other_gen1),
                                      "--json"])
    assert [e["name"] for e in json.loads(repeat.stdout)["ensembles"]] == ["first 2", "all 3"]


def test_ens_star_k_means_the_same_in_ensemble_and_report(gens, digits, tmp_path) -> None:
    """Ens*k averages BAN-1..BAN-k without the teacher in `bandistill ensemble` and in the ban report alike."""
    from bandistill.report import generation_metrics
    from bandistill.train import TrainConfig, train

    res2 = train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, seed=2, device="cpu"),
                 tmp_path / "runs" / "gen2", progress=False)
    ckpt = load_checkpoint(res2["checkpoint"])
    ckpt["generation"] = 2
    save_checkpoint(_plain(ckpt), res2["checkpoint"])
    chain = [gens["gen0"], gens["gen1"], tmp_path / "gen2.onnx"]
    export_checkpoint(res2["checkpoint"], chain[2], dataset=digits)

    res = CliRunner().invoke(cli, ["ensemble", "--onnx", *map(str, chain), "--json"])
    assert res.exit_code == 0, res.output
    ensemble = {e["name"]: e for e in json.loads(res.stdout)["ensembles"]}
    labels = digits.test_labels.numpy()
    report = generation_metrics(member_probabilities(chain, digits.test_images, provider="cpu"), labels)
    assert report["columns"] == ["baseline", "BAN-1", "BAN-2", "Ens*2", "Ens(0..2)"]
    for name in ("Ens*2", "Ens(0..2)"):
        cell, row = report["cells"][name], ensemble[name]
        assert cell["error"] == pytest.approx(100 * row["error"])
        assert cell["nll"] == pytest.approx(row["nll"], rel=1e-9) and cell["ece"] == pytest.approx(row["ece"], abs=1e-9)
    # and Ens*2 really is BAN-1 and BAN-2 only
    p1, p2 = _separate_probs(chain[1:], digits.test_images)
    expected_nll = -np.log(((p1 + p2) / 2)[np.arange(labels.size), labels]).mean()
    assert ensemble["Ens*2"]["nll"] == pytest.approx(expected_nll, rel=1e-5)
    assert ensemble["Ens*2"]["nll"] != pytest.approx(ensemble["Ens(0..2)"]["nll"], rel=1e-5)


def test_member_probabilities_keep_the_given_order(gens, digits) -> None:
    probs = member_probabilities([gens["gen1"], gens["gen0"]], digits.test_images[:50], provider="cpu")
    separate = _separate_probs([gens["gen1"], gens["gen0"]], digits.test_images[:50])
    for p, s in zip(probs, separate):
        np.testing.assert_allclose(p, s, atol=1e-6)


# -- one graph -------------------------------------------------------------------------------------
def test_merged_graph_is_one_session_with_the_same_predictions(gens, digits, tmp_path) -> None:
    bane = tmp_path / "bane.onnx"
    res = CliRunner().invoke(cli, ["ensemble", "--onnx", str(gens["dir"] / "gen*.onnx"), "--save-onnx", str(bane),
                                   "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    merged = data["merged"]
    assert merged["prediction_agreement"] == 1.0 and merged["max_abs_prob_diff"] < 1e-5
    assert merged["merged_accuracy"] == pytest.approx(data["ensemble"]["accuracy"])
    model = onnx.load(str(bane))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["probs"]
    meta = read_metadata(model)
    assert meta["kind"] == "ensemble" and meta["output"] == "probs"
    assert [m["name"] for m in json.loads(meta["members"])] == ["gen0.onnx", "gen1.onnx"]
    # one session gives the averaged members' probabilities at any batch size
    got = run_batched(create_session(bane, "cpu"), digits.test_images, batch_size=61)
    np.testing.assert_allclose(got, np.mean(_separate_probs([gens["gen0"], gens["gen1"]], digits.test_images), 0),
                               atol=1e-5)
    # and it is itself a member `ensemble` accepts
    alone = evaluate_ensemble([bane], "digits")
    assert alone["ensemble"]["accuracy"] == pytest.approx(data["ensemble"]["accuracy"])
    assert alone["members"][0]["networks"] == 2


def test_merged_logit_average_and_default_check(gens, digits, tmp_path) -> None:
    info = save_merged_onnx([gens["gen1"], gens["gen0"]], tmp_path / "bane_logits.onnx", average="logits")
    assert info["check_images"] == "random images" and info["members"] == ["gen0.onnx", "gen1.onnx"]
    got = run_batched(create_session(tmp_path / "bane_logits.onnx", "cpu"), digits.test_images)
    logits = [run_batched(create_session(p, "cpu"), digits.test_images) for p in (gens["gen0"], gens["gen1"])]
    np.testing.assert_allclose(got, softmax(np.mean(logits, axis=0)), atol=1e-5)


def test_merged_graph_that_disagrees_is_not_written(gens, digits, tmp_path) -> None:
    images = digits.test_images[:40]
    reference = combine([np.log(p) for p in _separate_probs([gens["gen0"], gens["gen1"]], images)])
    wrong = np.roll(reference, 1, axis=1)  # every prediction shifted by one class
    out = tmp_path / "bane.onnx"
    with pytest.raises(VerificationError, match="disagrees"):
        save_merged_onnx([gens["gen0"], gens["gen1"]], out, check_images=images, reference=wrong)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_merged_graph_is_checked_on_the_cpu_when_the_members_ran_elsewhere(gens, digits, tmp_path) -> None:
    """Members' probabilities from the CUDA provider may differ from any other session's by more than 1e-4
    (TF32 convolutions, kernels picked per session): such a reference is not the check's. Here a reference
    off by 5e-4, as if from CUDA: the merge is checked on the CPU (exact) and written; the difference is
    reported."""
    images = digits.test_images[:40]
    reference = combine([np.log(p) for p in _separate_probs([gens["gen0"], gens["gen1"]], images)])
    noisy = reference + np.where(np.arange(reference.shape[1]) % 2 == 0, 5e-4, -5e-4)
    info = save_merged_onnx([gens["gen0"], gens["gen1"]], tmp_path / "bane.onnx", check_images=images,
                            reference=noisy, reference_provider="cuda", labels=digits.test_labels[:40].numpy())
    assert info["checked_on"] == "cpu" and info["max_abs_prob_diff"] < 1e-5 and info["prediction_agreement"] == 1.0
    assert info["provider_max_abs_prob_diff"] == pytest.approx(5e-4, rel=0.01)
    assert info["merged_accuracy"] == pytest.approx(float((reference.argmax(1) == digits.test_labels[:40].numpy()).mean()))
    assert (tmp_path / "bane.onnx").exists()


# -- refusals -------------------------------------------------------------------------------------
def _refused(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["ensemble", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_refuses_different_class_counts(gens, odd_models) -> None:
    _refused(["--onnx", str(gens["gen0"]), str(odd_models["five"])], "different class counts")


def test_refuses_different_input_shapes(gens, odd_models) -> None:
    _refused(["--onnx", str(gens["gen0"]), "--onnx", str(odd_models["rgb"])], "different inputs")


def test_refuses_different_datasets_unless_allow_mixed(gens, odd_models) -> None:
    _refused(["--onnx", str(gens["gen0"]), str(odd_models["other_data"])], "--allow-mixed")
    res = CliRunner().invoke(cli, ["ensemble", "--onnx", str(gens["gen0"]), str(odd_models["other_data"]),
                                   "--allow-mixed", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ensemble"]["members"] == 2 and data["warnings"]  # the mismatch is still reported


def test_a_model_with_float_input_is_refused_not_fed_cast_images(gens, tmp_path) -> None:
    """A member taking float images next to uint8 data: one line, exit 2 (never a silent cast)."""
    from onnx import TensorProto, helper

    model = onnx.load(str(gens["gen0"]))
    for node in model.graph.node:  # image (float) -> Cast -> image_u8 -> the exported graph
        node.input[:] = ["image_u8" if name == "image" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Cast", ["image"], ["image_u8"], to=TensorProto.UINT8))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "float_in.onnx"))
    _refused(["--onnx", str(tmp_path / "float_in.onnx"), "--dataset", "digits"],
             "float_in.onnx takes float32 images but digits images are uint8")


def test_refuses_a_dataset_with_another_class_count(odd_models) -> None:
    _refused(["--onnx", str(odd_models["five"]), "--dataset", "digits"], "has 10 classes but the models predict 5")


@pytest.mark.parametrize("kind", ["text", "empty", "checkpoint", "foreign"])
def test_refuses_what_is_not_a_bandistill_onnx_model(gens, tmp_path, kind) -> None:
    path = tmp_path / "model.onnx"
    if kind == "text":
        path.write_text("this is not a model\n" * 20)
        message = "is not an ONNX model"
    elif kind == "empty":
        path.write_bytes(b"")
        message = "is not an ONNX model"
    elif kind == "checkpoint":
        path = shutil.copy(gens["ckpt0"], tmp_path / "model.pt")
        message = "looks like a PyTorch checkpoint"
    else:
        model = onnx.load(str(gens["gen0"]))
        del model.metadata_props[:]
        onnx.save(model, str(path))
        message = "without bandistill metadata"
    _refused(["--onnx", str(gens["gen0"]), "--onnx", str(path)], message)


@pytest.mark.parametrize("kind", ["checkpoint", "hdf5", "text"])
def test_save_onnx_never_replaces_a_file_that_is_not_onnx(gens, tmp_path, kind) -> None:
    """--save-onnx given a model.pt or a cache by mistake: refused, and the file is untouched."""
    if kind == "checkpoint":
        target = Path(shutil.copy(gens["ckpt0"], tmp_path / "model.pt"))
    elif kind == "hdf5":
        import h5py

        target = tmp_path / "gen0.h5"
        with h5py.File(target, "w") as f:
            f["x"] = np.arange(3)
    else:
        target = tmp_path / "notes"
        target.write_text("my notes\n")
    before = target.read_bytes()
    _refused(["--onnx", str(gens["gen0"]), str(gens["gen1"]), "--save-onnx", str(target)], "not an ONNX model")
    assert target.read_bytes() == before


def test_refuses_globs_and_paths_that_match_nothing(gens, tmp_path) -> None:
    _refused(["--onnx", str(tmp_path / "gen*.onnx")], "matches no file")
    _refused(["--onnx", str(tmp_path / "gen9.onnx")], "does not exist")
    _refused([], "no ONNX model given")
    _refused(["--onnx", str(gens["gen0"]), "--predictions", str(tmp_path / "p.txt")], ".npy, .npz or .csv")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_provider_cuda_without_a_gpu_is_a_clear_error(gens) -> None:
    _refused(["--onnx", str(gens["gen0"]), "--provider", "cuda"], "--provider cuda")


def test_library_refusals_raise_user_error(gens, odd_models) -> None:
    with pytest.raises(UserError, match="different class counts"):
        save_merged_onnx([gens["gen0"], odd_models["five"]], odd_models["five"].parent / "x.onnx")
    with pytest.raises(UserError, match="one of the members"):
        save_merged_onnx([gens["gen0"], gens["gen1"]], gens["gen1"])
    ds = ImageDataset("tiny", torch.zeros((4, 1, 8, 8), dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                      torch.zeros((2, 1, 8, 8), dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                      [str(i) for i in range(3)], view_policy=load_dataset("digits").view_policy)
    with pytest.raises(UserError, match="has 3 classes"):
        evaluate_ensemble([gens["gen0"]], ds)


def test_chain_ensembles_are_named_as_in_the_paper() -> None:
    from bandistill.bane import chain_ensembles

    def names(gens):
        return [(e.name, e.members) for e in chain_ensembles(gens)]

    assert names([0]) == [] and names([0, 1]) == [("Ens(0..1)", (0, 1))]
    assert names([0, 1, 2, 3]) == [("Ens*2", (1, 2)), ("Ens*3", (1, 2, 3)),
                                   ("Ens(0..1)", (0, 1)), ("Ens(0..2)", (0, 1, 2)), ("Ens(0..3)", (0, 1, 2, 3))]
    assert names([1, 2, 3]) == [("Ens*2", (0, 1)), ("Ens*3", (0, 1, 2))]  # students only
    assert names([2, 3]) == [("Ens(2..3)", (0, 1))]
    assert names([0, 1, 1]) == [("first 2", (0, 1)), ("all 3", (0, 1, 2))]  # not one chain: by position
    assert names([0, 2]) == [("all 2", (0, 1))]


def test_the_same_model_under_two_names_is_refused(gens, tmp_path) -> None:
    """A copy of a member (or a hard link) used to count that generation twice in the ensemble."""
    from conftest import assert_one_line_error, run_cli

    copy = tmp_path / "gen1-copy.onnx"
    shutil.copy(gens["gen1"], copy)
    result = run_cli("ensemble", "--onnx", gens["gen0"], "--onnx", gens["gen1"], "--onnx", copy)
    assert_one_line_error(result, "are the same model", "pass each member once")


def test_a_member_whose_weights_were_altered_is_refused(gens, tmp_path) -> None:
    """An altered member measured 91% error against the 25.6% its metadata records, and `ensemble` exited 0
    without a word. The export records its weights' digest: a mismatch is refused (a damaged file, exit 2).
    A file without the digest (an older export) is measured against its recorded accuracy: a loud warning."""
    from conftest import assert_one_line_error, run_cli
    from onnx import numpy_helper

    model = onnx.load(str(gens["gen1"]))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(biggest)
    rng = np.random.default_rng(0)
    biggest.CopyFrom(numpy_helper.from_array(rng.permutation(weights.ravel()).reshape(weights.shape).astype(weights.dtype),
                                             biggest.name))
    altered = tmp_path / "gen1.onnx"
    onnx.save(model, str(altered))
    assert_one_line_error(run_cli("ensemble", "--onnx", gens["gen0"], "--onnx", altered), "was altered after export",
                          "export it again")
    undigested = _copy_with_metadata(altered, tmp_path / "old" / "gen1.onnx", weights_digest="")
    result = run_cli("ensemble", "--onnx", gens["gen0"], "--onnx", undigested, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["members"][1]["accuracy"] < gens["acc1"] - 0.1  # really altered
    assert any("gen1.onnx measures" in w and "may have been altered" in w for w in data["warnings"]), data["warnings"]
    assert "warning:" in result.stderr and "may have been altered" in result.stderr
    clean = run_cli("ensemble", "--onnx", gens["gen0"], "--onnx", gens["gen1"], "--json")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["warnings"] == [], clean.output


def test_a_merged_ensemble_next_to_its_own_members_is_refused(gens, tmp_path) -> None:
    """bane.onnx given with gen0.onnx counted generation 0 twice."""
    from conftest import assert_one_line_error, run_cli

    bane = tmp_path / "bane.onnx"
    save_merged_onnx([gens["gen0"], gens["gen1"]], bane)
    assert_one_line_error(run_cli("ensemble", "--onnx", bane, "--onnx", gens["gen0"]),
                          "bane.onnx is a merged ensemble that already holds the network of", "gen0.onnx",
                          "not both")
    assert run_cli("ensemble", "--onnx", bane).exit_code == 0


@pytest.mark.parametrize("option", ["--predictions", "--save-onnx"])
def test_an_output_onto_a_member_is_refused_and_the_member_kept(gens, tmp_path, option) -> None:
    """`ensemble --predictions` onto a member file replaced that member."""
    from conftest import assert_one_line_error, run_cli

    member = tmp_path / ("gen1.npy" if option == "--predictions" else "gen1.onnx")  # any name is a member's name
    shutil.copy(gens["gen1"], member)
    before = member.read_bytes()
    assert_one_line_error(run_cli("ensemble", "--onnx", gens["gen0"], "--onnx", member, option, member),
                          f"{option} {member} is the member gen1", "left as it is")
    assert member.read_bytes() == before
