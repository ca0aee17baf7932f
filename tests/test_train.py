"""Real training runs on tiny data: files written, exact resume, schedules, refusals."""

from __future__ import annotations

import json

import pytest
import torch

import bandistill.train as train_module
from bandistill.checkpoint import load_checkpoint, model_from_checkpoint
from bandistill.errors import UserError
from bandistill.train import TrainConfig, learning_rate, train


def test_a_short_run_learns_and_writes_its_files(digits_gen0, tmp_path):
    res = digits_gen0
    assert res["test_accuracy"] > 0.5 and res["generation"] == 0  # chance is 0.1
    out = res["checkpoint"].rsplit("/", 1)[0]
    lines = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("loss", "train_accuracy", "test_accuracy", "test_loss", "lr", "seconds", "images_per_s"):
        assert key in lines[0]
    ckpt = load_checkpoint(res["checkpoint"])
    assert ckpt["model"]["name"] == "resnet-20" and ckpt["dataset"]["name"] == "digits"
    assert ckpt["metrics"]["test_accuracy"] == res["test_accuracy"]
    assert "optimizer" not in ckpt  # the final file is weights, not training state
    model = model_from_checkpoint(ckpt)
    assert not model.training


def test_resume_after_a_crash_ends_with_the_same_metrics(tmp_path, monkeypatch):
    config = dict(model="resnet-20", dataset="digits", epochs=3, seed=3, device="cpu", batch_size=256)
    whole = train(TrainConfig(**config), tmp_path / "a", progress=False)

    real_save, calls = train_module.save_checkpoint, []

    def crash_after_second_epoch(obj, path):
        real_save(obj, path)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), tmp_path / "b", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = train(TrainConfig(**config), tmp_path / "b", resume=True, progress=False)
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["test_loss"] == whole["test_loss"]
    a = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = load_checkpoint(tmp_path / "a" / "model.pt")["state_dict"]
    wb = load_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_other_settings(digits_gen0):
    out = digits_gen0["checkpoint"].rsplit("/", 1)[0]
    with pytest.raises(UserError, match="lr=0.1, not 0.05"):
        train(TrainConfig(model="resnet-20", dataset="digits", epochs=2, lr=0.05), out, resume=True, progress=False)


def test_resume_of_a_finished_run_does_not_retrain(digits_gen0):
    out = digits_gen0["checkpoint"].rsplit("/", 1)[0]
    before = load_checkpoint(f"{out}/model.pt")["state_dict"]
    res = train(TrainConfig(model="resnet-20", dataset="digits", epochs=2, seed=0, device="cpu"), out,
                resume=True, progress=False)
    assert res["test_accuracy"] == digits_gen0["test_accuracy"]
    after = load_checkpoint(f"{out}/model.pt")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_out_holding_a_run_is_refused_without_resume(digits_gen0):
    out = digits_gen0["checkpoint"].rsplit("/", 1)[0]
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(TrainConfig(model="resnet-20", dataset="digits", epochs=2), out, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "--epochs must be a positive"),
        (dict(batch_size=-1), "--batch-size"),
        (dict(model="resnet-21"), "resnet-21"),
        (dict(schedule="linear"), "--schedule"),
    ],
)
def test_bad_config_is_refused(kwargs, message, tmp_path):
    config = dict(model="resnet-20", dataset="digits", epochs=1) | kwargs
    with pytest.raises(UserError, match=message):
        train(TrainConfig(**config), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_step_schedule_follows_wide_resnet():
    c = TrainConfig(model="wrn-16-2", dataset="digits", epochs=200).validate()
    lrs = [learning_rate(c, e, 0, 10) for e in (0, 59, 60, 119, 120, 160, 199)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.0008, 0.0008])
    assert c.weight_decay == 5e-4
    cos = TrainConfig(model="resnet-20", dataset="digits", epochs=10, schedule="cosine").validate()
    assert learning_rate(cos, 0, 0, 10) == pytest.approx(0.1) and learning_rate(cos, 5, 0, 10) == pytest.approx(0.05)


def test_trains_on_cifar_pickles_and_imagefolder(cifar10_dir, imagefolder_dir, tmp_path):
    r1 = train(TrainConfig(model="resnet-20", dataset="cifar10", data_dir=str(cifar10_dir), epochs=1,
                           batch_size=16), tmp_path / "c", progress=False)
    r2 = train(TrainConfig(model="wrn-10-1", dataset="imagefolder", data_dir=str(imagefolder_dir), epochs=1,
                           batch_size=4, val_split=0.25), tmp_path / "i", progress=False)
    assert 0.0 <= r1["test_accuracy"] <= 1.0 and "val_accuracy" in r2


def test_transfer_ends_copies_and_freezes_matching_layers(digits_gen0, tmp_path):
    teacher = load_checkpoint(digits_gen0["checkpoint"])["state_dict"]
    res = train(TrainConfig(model="resnet-32", dataset="digits", epochs=1, transfer_ends_from=digits_gen0["checkpoint"]),
                tmp_path / "s", progress=False)
    assert res["transferred"] == ["stem", "classifier"]
    student = load_checkpoint(res["checkpoint"])["state_dict"]
    for key in ("stem.weight", "classifier.weight", "classifier.bias"):
        assert torch.equal(student[key], teacher[key]), key  # copied, then frozen through training
    assert not torch.equal(student["bn1.weight"], teacher["bn1.weight"])
    partial = train(TrainConfig(model="wrn-16-2", dataset="digits", epochs=1,
                                transfer_ends_from=digits_gen0["checkpoint"]), tmp_path / "w", progress=False)
    assert partial["transferred"] == ["stem"]  # 128 features vs the teacher's 64: classifier not copyable
    with pytest.raises(UserError, match="shapes differ"):
        train(TrainConfig(model="densenet-bc-10-4", dataset="digits", epochs=1,
                          transfer_ends_from=digits_gen0["checkpoint"]), tmp_path / "d", progress=False)


def test_a_damaged_final_file_is_rewritten_from_the_resume_state(tmp_path):
    config = dict(model="resnet-20", dataset="digits", epochs=1, seed=0, device="cpu")
    first = train(TrainConfig(**config), tmp_path / "r", progress=False)
    good = load_checkpoint(tmp_path / "r" / "model.pt")["state_dict"]
    path = tmp_path / "r" / "model.pt"
    path.write_bytes(path.read_bytes()[:1000])
    again = train(TrainConfig(**config), tmp_path / "r", resume=True, progress=False)
    assert again["test_accuracy"] == first["test_accuracy"]
    repaired = load_checkpoint(path)["state_dict"]
    assert all(torch.equal(good[k], repaired[k]) for k in good)


def test_written_files_follow_the_umask(digits_gen0):
    import os
    import stat

    mode = stat.S_IMODE(os.stat(digits_gen0["checkpoint"]).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_eval_every_skips_evaluations_but_always_evaluates_the_last_epoch(tmp_path):
    res = train(TrainConfig(model="resnet-20", dataset="digits", epochs=3, eval_every=2, batch_size=256,
                            device="cpu"), tmp_path / "e", progress=False)
    lines = [json.loads(x) for x in open(tmp_path / "e" / "metrics.jsonl")]
    assert ["test_accuracy" in r for r in lines] == [False, True, True]
    assert res["test_accuracy"] == lines[-1]["test_accuracy"]


def test_compile_graph_needs_a_gpu_and_eval_every_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="--compile graph .* needs a GPU"):
        train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, compile="graph", device="cpu"),
              tmp_path / "g", progress=False)
    with pytest.raises(UserError, match="--eval-every"):
        train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, eval_every=0), tmp_path / "v",
              progress=False)
    with pytest.raises(UserError, match="--compile"):
        train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, compile="fast"), tmp_path / "f",
              progress=False)
    assert not (tmp_path / "g").exists()


# -- finite or fail ---------------------------------------------------------------------------------
def test_a_diverged_run_stops_with_exit_1_naming_the_epoch(tmp_path):
    """--lr 1e6 used to train on NaN to the end, write model.pt and exit 0."""
    from conftest import assert_one_line_error, run_cli

    out = tmp_path / "r"
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "3", "--lr", "1e6",
                     "--out", out)
    err = assert_one_line_error(result, "training diverged", "epoch 1 of 3", code=1)
    assert "nan" in err.lower() or "inf" in err.lower()
    assert not (out / "model.pt").exists() and not (out / "last.pt").exists()
    assert (out / "metrics.jsonl").read_text() == ""  # no NaN record


def test_a_loss_that_turns_nan_later_keeps_the_last_good_epoch(tmp_path):
    from bandistill.errors import NonFiniteError
    from bandistill.train import TrainRun

    run = TrainRun(TrainConfig(model="resnet-20", dataset="digits", epochs=3, batch_size=512, device="cpu"),
                   tmp_path / "r", progress=False)
    steps_per_epoch, calls = 3, []  # 1438 images in batches of 512
    real_loss = run.loss_fn

    def nan_from_epoch_2(logits, labels, teacher):
        calls.append(1)
        loss = real_loss(logits, labels, teacher)
        return loss * float("nan") if len(calls) > steps_per_epoch else loss

    run.loss_fn = nan_from_epoch_2
    with pytest.raises(NonFiniteError, match=r"epoch 2 of 3 .*last.pt keeps epoch 1"):
        run.run()
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "r" / "model.pt").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--weight-decay", "inf"], "--weight-decay must be >= 0"),
])
def test_non_finite_options_are_refused(tmp_path, args, fragment):
    from conftest import assert_one_line_error, run_cli

    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", *args,
                     "--out", tmp_path / "r")
    assert_one_line_error(result, fragment)


# -- issue 20: batches, resume rules --------------------------------------------------------------
def _count_steps(run) -> list[int]:
    """Wrap a TrainRun's loss to record each step's batch size (the real loss still trains)."""
    sizes, real_loss = [], run.loss_fn

    def counting(logits, labels, teacher):
        sizes.append(int(labels.shape[0]))
        return real_loss(logits, labels, teacher)

    run.loss_fn = counting
    return sizes


@pytest.mark.parametrize("batch_size, steps", [(1, [1] * 12), (5, [5, 5, 2]), (11, [11])])
def test_only_a_final_one_sample_batch_is_dropped(imagefolder_dir, tmp_path, batch_size, steps):
    """--batch-size 1 trained one batch per epoch (every batch after the first was 'a final one-sample batch')."""
    from bandistill.train import TrainRun

    run = TrainRun(TrainConfig(model="resnet-8", dataset="imagefolder", data_dir=str(imagefolder_dir), epochs=1,
                               batch_size=batch_size, device="cpu"), tmp_path / "r", progress=False)
    sizes = _count_steps(run)
    run.run()
    assert sizes == steps  # 12 images: batches of 1 all train; a remainder of 2 trains; a remainder of 1 does not


@pytest.mark.parametrize("size, batch_size, ranks, trains", [
    (1, 1, 1, True), (1, 5, 1, False), (2, 5, 1, True),  # one process: only a one-sample remainder is dropped
    (1, 1, 2, True), (2, 3, 2, True), (1, 3, 2, False),  # two ranks: the same batches as one process
    (3, 8, 4, False), (4, 8, 4, True),  # four ranks: a remainder a rank would get nothing of
])
def test_the_final_batch_rule(size, batch_size, ranks, trains):
    from bandistill.train import trains_batch

    assert trains_batch(size, batch_size, ranks, first=False) is trains
    assert trains_batch(size, batch_size, ranks, first=True)


def _tiny(**kw) -> dict:
    return dict(model="resnet-8", dataset="digits", epochs=1, batch_size=512, device="cpu", seed=0) | kw


def test_resume_compares_whole_configs_both_ways(tmp_path):
    """A dropped --sync-bn was accepted (only the new config's keys were compared, and False was left out);
    the reverse was refused as 'started with sync_bn=None'."""
    with_sync = tmp_path / "with"
    train(TrainConfig(**_tiny(sync_bn=True)), with_sync, progress=False)
    with pytest.raises(UserError, match="started with sync_bn=True, not False"):
        train(TrainConfig(**_tiny()), with_sync, resume=True, progress=False)
    without = tmp_path / "without"
    train(TrainConfig(**_tiny()), without, progress=False)
    with pytest.raises(UserError, match="started with sync_bn=False, not True"):
        train(TrainConfig(**_tiny(sync_bn=True)), without, resume=True, progress=False)
    train(TrainConfig(**_tiny()), without, resume=True, progress=False)  # the same options still resume


def test_resume_from_a_copy_of_model_pt_reports_the_finished_run(tmp_path):
    """'cp model.pt last.pt' (a realistic repair of a damaged last.pt) then --resume was KeyError: 'optimizer'."""
    import shutil

    out = tmp_path / "r"
    first = train(TrainConfig(**_tiny()), out, progress=False)
    shutil.copy(out / "model.pt", out / "last.pt")
    again = train(TrainConfig(**_tiny()), out, resume=True, progress=False)
    assert again["test_accuracy"] == first["test_accuracy"]
    (out / "last.pt").write_bytes(b"damaged")  # a finished model.pt is enough to report the run
    assert train(TrainConfig(**_tiny()), out, resume=True, progress=False)["test_accuracy"] == first["test_accuracy"]
    (out / "last.pt").unlink()
    assert train(TrainConfig(**_tiny()), out, resume=True, progress=False)["test_accuracy"] == first["test_accuracy"]


def test_resume_state_without_optimizer_before_the_end_is_refused(tmp_path):
    from bandistill.checkpoint import save_checkpoint

    out = tmp_path / "r"
    train(TrainConfig(**_tiny(epochs=2)), out, progress=False)
    state = load_checkpoint(out / "last.pt")
    del state["optimizer"]
    state["epoch"], state["history"] = 1, state["history"][:1]
    save_checkpoint(state, out / "last.pt")
    (out / "model.pt").unlink()
    with pytest.raises(UserError, match="no optimizer state"):
        train(TrainConfig(**_tiny(epochs=2)), out, resume=True, progress=False)


def test_resume_of_a_finished_run_rewrites_a_garbage_metrics_file(tmp_path):
    out = tmp_path / "r"
    train(TrainConfig(**_tiny()), out, progress=False)
    good = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("garbage\n{not json\n")
    train(TrainConfig(**_tiny()), out, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == good


@pytest.mark.parametrize("epoch", [99, -1])
def test_resume_state_claiming_impossible_epochs_is_refused(tmp_path, epoch):
    """A last.pt claiming epoch 99 of 2 was taken as a finished run."""
    from bandistill.checkpoint import save_checkpoint

    out = tmp_path / "r"
    train(TrainConfig(**_tiny()), out, progress=False)
    state = load_checkpoint(out / "last.pt")
    state["epoch"] = epoch
    save_checkpoint(state, out / "last.pt")
    (out / "model.pt").unlink()
    with pytest.raises(UserError, match=f"claims {epoch} of 1 epochs"):
        train(TrainConfig(**_tiny()), out, resume=True, progress=False)
    assert not (out / "model.pt").exists()


def test_a_global_batch_smaller_than_the_world_is_refused(monkeypatch):
    """Under torchrun (its variables set) a rank would get no sample of a batch."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--batch-size 1 is the global batch, smaller than the 2 processes"):
        TrainConfig(**_tiny(batch_size=1)).validate()
    TrainConfig(**_tiny(batch_size=2)).validate()


# -- issue 20: checkpoints that do not hold together ------------------------------------------------
def _edited(src, dst, edit):
    from bandistill.checkpoint import save_checkpoint

    ckpt = load_checkpoint(src)
    edit(ckpt)
    save_checkpoint(ckpt, dst)
    return dst


def _nan_weights(ckpt):
    ckpt["state_dict"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}


EDITS = {
    "no-model": (lambda c: c.pop("model"), "lacks its 'model' entry"),
    "no-dataset": (lambda c: c.pop("dataset"), "lacks its 'dataset' entry"),
    "classes": (lambda c: c.update(model={**c["model"], "num_classes": 5}), "weights do not fit its model (resnet-20 with 5 classes"),
    "name": (lambda c: c.update(model={**c["model"], "name": "resnet-32"}), "weights do not fit its model (resnet-32"),
    "nan": (_nan_weights, "weights are not finite"),
}


@pytest.mark.parametrize("case", list(EDITS))
@pytest.mark.parametrize("stage", ["export", "dump-logits", "teacher-checkpoint"])
def test_a_checkpoint_that_does_not_hold_together_is_one_line_exit_2(digits_teacher, tmp_path, case, stage):
    """KeyError, a state-dict size mismatch (tracebacks), or exit 1 for NaN weights in export but 2 in dump."""
    from conftest import assert_one_line_error, run_cli

    edit, fragment = EDITS[case]
    bad = _edited(digits_teacher, tmp_path / "bad.pt", edit)
    if stage == "export":
        result = run_cli("export", bad, "--out", tmp_path / "bad.onnx")
    elif stage == "dump-logits":
        result = run_cli("dump-logits", "--checkpoint", bad, "--dataset", "digits", "--views", 1, "--device", "cpu",
                         "--out", tmp_path / "c.h5")
    else:
        result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                         "--teacher-checkpoint", bad, "--out", tmp_path / "s")
    assert_one_line_error(result, fragment)


def test_resume_from_a_last_pt_without_its_dataset_is_one_line(tmp_path):
    from conftest import assert_one_line_error, run_cli

    out = tmp_path / "r"
    args = ["train", "--model", "resnet-8", "--dataset", "digits", "--epochs", 2, "--batch-size", 512,
            "--device", "cpu", "--out", out]
    assert run_cli(*args).exit_code == 0
    (out / "model.pt").unlink()
    _edited(out / "last.pt", out / "last.pt", lambda c: c.pop("dataset"))
    assert_one_line_error(run_cli(*args, "--resume"), "last.pt is damaged", "lacks its 'dataset' entry")


def test_a_temperature_float32_cannot_use_is_refused_not_blamed_on_the_lr(digits_cache, tmp_path):
    """--temperature 1e30 trained to an inf loss and was told to 'lower --lr' (exit 1)."""
    from conftest import assert_one_line_error, run_cli

    result = run_cli("train", "--model", "resnet-8", "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                     "--teacher-logits", digits_cache, "--loss", "kd", "--temperature", "1e30", "--out", tmp_path / "s")
    assert_one_line_error(result, "--temperature must be between 0.01 and 100")
    assert not (tmp_path / "s").exists()


def test_loss_settings_are_checked_by_one_rule_everywhere():
    from bandistill.losses import make_loss
    from bandistill.run.options import BanOptions

    message = "--alpha weighs the soft term of --loss kd only"
    with pytest.raises(UserError, match=message):
        make_loss("ban", alpha=0.3)
    with pytest.raises(UserError, match=message):
        TrainConfig(**_tiny(teacher_cache="c.h5", loss="ban", alpha=0.3)).validate()
    with pytest.raises(UserError, match=message):
        BanOptions(model="resnet-8", dataset="digits", loss="ban", alpha=0.3).validate()
    with pytest.raises(UserError, match="--temperature must be between"):
        BanOptions(model="resnet-8", dataset="digits", loss="kd", temperature=1e30).validate()


def test_renamed_config_fields_read_their_old_names(digits_cache, tmp_path):
    """teacher_logits held a path and cache_memory_budget_gb budgeted GPU memory on CUDA: renamed, old names read."""
    from conftest import run_cli

    old = {"model": "resnet-8", "dataset": "digits", "teacher_logits": "c.h5", "cache_memory_budget_gb": 0.5}
    config = TrainConfig.from_dict(old)
    assert config.teacher_cache == "c.h5" and config.device_cache_gb == 0.5
    assert TrainConfig.recorded(old)["teacher_cache"] == "c.h5"
    assert TrainConfig(**old).teacher_cache == "c.h5" and TrainConfig(**old).teacher_logits == "c.h5"  # Python callers
    args = ["train", "--model", "resnet-8", "--dataset", "digits", "--epochs", 1, "--batch-size", 512, "--device",
            "cpu", "--teacher-logits", digits_cache]
    assert run_cli(*args, "--cache-memory-gb", 0, "--out", tmp_path / "a", "--json").exit_code == 0  # old option
    assert load_checkpoint(tmp_path / "a" / "model.pt")["config"]["device_cache_gb"] == 0
    assert run_cli(*args, "--device-cache-gb", 0, "--out", tmp_path / "a", "--resume").exit_code == 0
    assert "--cache-memory-gb" not in run_cli("train", "--help").output
