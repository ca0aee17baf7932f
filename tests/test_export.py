"""Tests for ``bandistill export``: real exports of trained digits models, run in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.cli.main import cli
from bandistill.errors import UserError, VerificationError
from bandistill.cli.paths import plan_exports
from bandistill.onnx.export import export_checkpoint
from bandistill.onnx.meta import DEFAULT_OPSET, read_metadata
from bandistill.onnx.runtime import create_session, run_batched


@pytest.fixture(scope="session")
def gen0_ckpt(digits_gen0) -> Path:
    return Path(digits_gen0["checkpoint"])


@pytest.fixture(scope="session")
def gen0_onnx(gen0_ckpt, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "gen0.onnx"
    return out, export_checkpoint(gen0_ckpt, out)


def test_export_is_self_describing_and_checked(gen0_onnx, gen0_ckpt) -> None:
    path, result = gen0_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = read_metadata(model)
    ckpt = load_checkpoint(gen0_ckpt)
    assert meta["format"] == "bandistill-onnx" and meta["kind"] == "member" and meta["output"] == "logits"
    assert meta["model"] == "resnet-20" and meta["num_classes"] == "10"
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert meta["dataset"] == "digits" and meta["dataset_fingerprint"] == ckpt["dataset"]["fingerprint"]
    assert meta["generation"] == "0"
    assert json.loads(meta["mean"]) == pytest.approx(ckpt["normalization"]["mean"])
    assert json.loads(meta["input_shape"]) == [1, 8, 8] and meta["input_dtype"] == "uint8"
    assert "0-255" in meta["input"] and "Do not normalise" in meta["input"]
    assert json.loads(meta["test_accuracy"]) == pytest.approx(ckpt["metrics"]["test_accuracy"])
    # one uint8 input with a dynamic batch axis, one float output
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.name == "logits" and out.type.tensor_type.shape.dim[0].dim_param == "batch"
    parity = result["parity"]
    assert parity["max_abs_logit_diff"] < 1e-3 and parity["argmax_agreement"] == 1.0
    assert result["generation"] == 0 and result["opset"] == DEFAULT_OPSET


def test_onnx_accuracy_equals_what_train_reported(gen0_onnx, digits, digits_gen0) -> None:
    path, _ = gen0_onnx
    session = create_session(path, "cpu")
    logits = run_batched(session, digits.test_images, batch_size=97)  # odd batches: the axis is dynamic
    acc = float((logits.argmax(1) == digits.test_labels.numpy()).mean())
    n = digits.test_labels.numel()
    assert abs(acc - digits_gen0["test_accuracy"]) * n <= 1.0
    # raw image in: the same logits whatever batch size
    one = run_batched(session, digits.test_images[:3], batch_size=1)
    np.testing.assert_allclose(one, logits[:3], atol=1e-5)


def test_float_images_are_refused_not_cast(gen0_onnx, digits) -> None:
    session = create_session(gen0_onnx[0], "cpu")
    floats = digits.test_images[:8].numpy().astype(np.float32) / 255  # what a deployment might pass by mistake
    with pytest.raises(Exception, match="(?i)type|uint8"):
        session.run(None, {"image": floats})  # onnxruntime's own type check
    for images in (floats, torch.from_numpy(floats), floats.astype(np.float64), floats.astype(np.int64)):
        with pytest.raises(UserError, match="takes uint8 images .* but was given (float32|float64|int64) images; "
                                            "pass them as uint8 .nothing is cast"):
            run_batched(session, images)
    from bandistill.onnx.members import member_probabilities

    with pytest.raises(UserError, match="nothing is cast"):
        member_probabilities([gen0_onnx[0]], floats, provider="cpu")
    assert run_batched(session, digits.test_images[:8]).shape == (8, 10)  # uint8 goes in as it is


def test_old_opset_uses_the_torchscript_exporter(gen0_ckpt, digits, tmp_path) -> None:
    result = export_checkpoint(gen0_ckpt, tmp_path / "old.onnx", opset=17, dataset=digits)
    assert result["opset"] == 17 and "torchscript" in result["exporter"]
    assert result["parity"]["max_abs_logit_diff"] < 1e-3
    with pytest.raises(UserError, match="opset 18 or newer"):
        export_checkpoint(gen0_ckpt, tmp_path / "x.onnx", opset=17, exporter="dynamo")
    with pytest.raises(UserError, match="out of range"):
        export_checkpoint(gen0_ckpt, tmp_path / "x.onnx", opset=99)


def test_failed_parity_exits_1_and_leaves_no_file(gen0_ckpt, gen0_onnx, tmp_path) -> None:
    out = tmp_path / "onnx" / "gen0.onnx"
    args = ["export", "--checkpoint", str(gen0_ckpt), "--out", str(out), "--exporter", "torchscript",
            "--tolerance", "1e-12"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert "differ from PyTorch" in res.output and "Traceback" not in res.output
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]
    # an earlier good file under the final name is left as it was
    old = gen0_onnx[0].read_bytes()
    out.write_bytes(old)
    with pytest.raises(VerificationError, match="kept its old contents"):
        export_checkpoint(gen0_ckpt, out, exporter="torchscript", tolerance=1e-12)
    assert out.read_bytes() == old


def test_export_cli_json_and_folder_of_runs(gen0_ckpt, digits, tmp_path) -> None:
    # A folder of two runs; --out a folder -> <run>.onnx each.
    runs = tmp_path / "runs"
    for name in ("gen0", "gen1"):
        (runs / name).mkdir(parents=True)
        ckpt = load_checkpoint(gen0_ckpt)
        ckpt["generation"] = int(name[-1])
        save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "format_version")}, runs / name / "model.pt")
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(runs), "--out", str(tmp_path / "onnx"),
                                   "--exporter", "torchscript", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [Path(e["out"]).name for e in data["exports"]] == ["gen0.onnx", "gen1.onnx"]
    assert [e["generation"] for e in data["exports"]] == [0, 1]
    gen1 = read_metadata(onnx.load(str(tmp_path / "onnx" / "gen1.onnx")))
    assert gen1["generation"] == "1"


def test_plan_exports_pairs_and_refusals(gen0_ckpt, tmp_path) -> None:
    run = gen0_ckpt.parent
    assert plan_exports([run], ["a.onnx"]) == [(gen0_ckpt, Path("a.onnx"))]
    assert plan_exports([gen0_ckpt], [str(tmp_path / "out")]) == [(gen0_ckpt, tmp_path / "out" / f"{run.name}.onnx")]
    with pytest.raises(UserError, match="does not exist"):
        plan_exports([tmp_path / "missing.pt"], ["a.onnx"])
    with pytest.raises(UserError, match="no --out"):
        plan_exports([gen0_ckpt], [])
    with pytest.raises(UserError, match="would be exported to"):
        plan_exports([gen0_ckpt, run / "last.pt"], [str(tmp_path / "o")])


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a checkpoint at all", "not a"), (None, "does not exist")],
)
def test_bad_checkpoint_is_one_line_exit_2(tmp_path, content, message) -> None:
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_out_that_is_a_checkpoint_is_refused_and_kept(gen0_ckpt, tmp_path) -> None:
    """Two --out values given in the wrong order must not turn a model.pt into an ONNX file."""
    import shutil

    victim = Path(shutil.copy(gen0_ckpt, tmp_path / "model.pt"))
    before = victim.read_bytes()
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(gen0_ckpt), "--checkpoint", str(gen0_ckpt.parent / "last.pt"),
                                   "--out", str(tmp_path / "a.onnx"), "--out", str(victim)])
    assert res.exit_code == 2, res.output
    assert "PyTorch checkpoint" in res.output and len(res.output.strip().splitlines()) == 1
    assert victim.read_bytes() == before


def test_a_killed_export_leaves_no_temporary_behind(gen0_ckpt, tmp_path) -> None:
    """A writer killed mid-export used to leave its hidden .gen0.onnx.<random>.tmp forever; the next write of
    the same file removes such leftovers, but never the temporary file a live writer holds (locked)."""
    import fcntl
    import os

    out = tmp_path / "gen0.onnx"
    left = tmp_path / ".gen0.onnx.k1ll3d_x.tmp"  # what atomic_write's temporary file is named
    left.write_bytes(b"half an onnx file")
    live = tmp_path / ".gen0.onnx.wr1t1ng_.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / ".gen1.onnx.k1ll3d_x.tmp"  # another file's: not this write's business
    other.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a concurrent writer holds it
        export_checkpoint(gen0_ckpt, out, exporter="torchscript", opset=17)
    finally:
        os.close(fd)
    assert out.is_file() and not left.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])


def test_the_export_does_not_depend_on_where_the_run_folder_lives(gen0_ckpt, tmp_path) -> None:
    """The metadata named the checkpoint by absolute path: after moving a run folder a re-export had other
    bytes, and `ban` took the unchanged generation for a changed one."""
    import shutil

    first, second = tmp_path / "a" / "run", tmp_path / "b" / "moved" / "run"
    for root in (first, second):
        (root / "gen0").mkdir(parents=True)
        shutil.copy(gen0_ckpt, root / "gen0" / "model.pt")
        export_checkpoint(root / "gen0" / "model.pt", root / "onnx" / "gen0.onnx", exporter="torchscript", opset=17)
    assert (first / "onnx" / "gen0.onnx").read_bytes() == (second / "onnx" / "gen0.onnx").read_bytes()
    meta = read_metadata(onnx.load(str(first / "onnx" / "gen0.onnx")))
    assert meta["checkpoint"] == str(Path("..") / "gen0" / "model.pt")
    from bandistill.onnx.members import read_member

    member = read_member(second / "onnx" / "gen0.onnx")  # the recorded path leads back to the checkpoint
    assert member.checkpoint is not None and member.checkpoint.resolve() == (second / "gen0" / "model.pt").resolve()
