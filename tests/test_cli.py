"""The command line: results on stdout, and every user mistake as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import assert_one_line_error, run_cli


def test_train_json(tmp_path):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--out",
                 str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("model", "dataset", "epochs", "test_accuracy", "test_loss", "checkpoint"):
        assert key in data
    assert (tmp_path / "r" / "model.pt").exists()


def test_models_json_lists_parameter_counts():
    result = run_cli("models", "--num-classes", "100", "--json")
    assert result.exit_code == 0, result.output
    models = {m["name"]: m["parameters"] for m in json.loads(result.stdout)["models"]}
    assert models["densenet-bc-100-12"] == pytest.approx(0.80e6, rel=0.01)
    assert models["wrn-28-10"] == pytest.approx(36.5e6, rel=0.01)


def test_unknown_model_names_the_closest(tmp_path):
    result = run_cli("train", "--model", "resnet-21", "--dataset", "digits", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "resnet-21", "resnet-20")


def test_unknown_dataset(tmp_path):
    assert_one_line_error(run_cli("train", "--model", "resnet-20", "--dataset", "cifar11", "--out", str(tmp_path / "r")),
                          "cifar11", "cifar10")


def test_missing_data_folder(tmp_path):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "cifar-10-batches-py", "--download")
    assert not (tmp_path / "r").exists()


def test_out_holding_another_run(digits_gen0):
    out = digits_gen0["checkpoint"].rsplit("/", 1)[0]
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "2", "--out", out)
    assert_one_line_error(result, "already holds a run", "--resume")


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_non_positive_epochs(tmp_path, epochs):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", epochs, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "--epochs must be a positive")


def test_negative_cache_memory_budget(tmp_path):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--device-cache-gb", "-1",
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "--device-cache-gb must be >= 0")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, fragment", [
    (["train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "abc", "--out", "r"], "'--epochs'"),
    (["models", "--num-classes", "0"], "'--num-classes'"),
    (["train", "--model", "resnet-20", "--out", "r"], "--dataset"),
    (["ensemble", "--average", "median"], "'--average'"),
    (["train", "--epoch", "3"], "--epochs"),
    (["trian"], "train"),
])
def test_malformed_command_line_is_one_line(args, fragment):
    """click's own usage errors (bad value, missing or unknown option, typo in the command) are one line too."""
    result = run_cli(*args)
    assert_one_line_error(result, fragment)
    assert "Usage:" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "no", "GPU", "--device cpu")


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "bandistill.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "bandistill" in out.stdout


def test_unwritable_output_path_is_one_line(tmp_path, digits_gen0):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("export", "--checkpoint", digits_gen0["checkpoint"], "--out", str(blocker / "gen0.onnx"))
    assert_one_line_error(result, "a-file", "check the path")
    assert blocker.read_text() == ""


@pytest.mark.parametrize("extra, hint", [([], "again with --resume"), (["--resume"], "same command again to resume")])
def test_interrupted_train_says_how_to_continue(tmp_path, monkeypatch, extra, hint):
    """Ctrl-C in train: exit 130 and a hint that works (a plain re-run refuses the half-written folder)."""
    import bandistill.cli.train as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", interrupted)
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--out", str(tmp_path / "r"), *extra)
    assert result.exit_code == 130, result.output
    assert hint in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--out", ""],
    ["ban", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--out", ""],
])
def test_an_empty_out_is_refused(tmp_path, monkeypatch, args):
    """--out '' used to write model.pt, gen0/ and the report into the current folder."""
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(*args), "--out is empty")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_dump_out_is_refused(tmp_path, monkeypatch, digits_teacher):
    monkeypatch.chdir(tmp_path)
    result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 1, "--out", "")
    assert_one_line_error(result, "--out is empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, fragment", [
    (["--loss", "kd"], "--loss applies to a student"),
    (["--temperature", "4"], "--temperature applies to a student"),
    (["--loss", "ban+l"], "--loss applies to a student"),
])
def test_student_options_without_a_teacher_are_refused(tmp_path, extra, fragment):
    """They used to be silently ignored (gen0 trains on labels only)."""
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", *extra,
                     "--out", tmp_path / "r")
    assert_one_line_error(result, fragment, "--teacher-logits")
    assert not (tmp_path / "r").exists()


def test_alpha_with_a_loss_that_has_no_alpha_is_refused(tmp_path, digits_cache):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--teacher-logits",
                     digits_cache, "--loss", "ban", "--alpha", "0.3", "--out", tmp_path / "r")
    assert_one_line_error(result, "--alpha weighs the soft term of --loss kd only")


@pytest.mark.parametrize("keep", [0, 100, 1000, 50_000])
def test_a_truncated_checkpoint_says_so_in_words(tmp_path, digits_teacher, keep):
    """It used to print torch's '[Errno 22] Invalid argument' or a cut-off miniz message."""
    cut = tmp_path / "model.pt"
    cut.write_bytes(digits_teacher.read_bytes()[:keep])
    result = run_cli("dump-logits", "--checkpoint", cut, "--dataset", "digits", "--views", 1,
                     "--out", tmp_path / "c.h5")
    err = assert_one_line_error(result, "is truncated or damaged")
    assert "Errno" not in err and "miniz" not in err
