"""The streaming source and the RandomResizedCrop policy: photos that stay on disk, views replayed exactly.

A generated JPEG tree of varying sizes and modes stands in for ImageNet: the boxes follow
torchvision's rules, depend on nothing but (seed, view, sample, image size), and a student
trained from a ``--views epochs`` cache sees the images a live-teacher student sees, bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bandistill.data import RandomResizedCrop, load_dataset
from bandistill.data.resized_crop import boxes
from bandistill.data.views import view_hash
from bandistill.errors import UserError
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def write_jpeg_tree(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """train/ and val/ of three classes; every JPEG its own size (20..59 px a side), one in three greyscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", 2)):
        for c, cls in enumerate(("a", "b", "c")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                arr = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
                arr[..., c] += 150
                img = Image.fromarray(arr)
                (img.convert("L") if i % 3 == 1 else img).save(d / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory) -> Path:
    return write_jpeg_tree(tmp_path_factory.mktemp("photos"))


# -- the policy --------------------------------------------------------------------------------
def test_boxes_follow_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop as TorchRRC

    n, H, W = 20000, 300, 200
    h = view_hash(3, 0, np.arange(n, dtype=np.uint64))
    p = boxes(h, np.full(n, H), np.full(n, W)).numpy().astype(np.int64)
    top, left, bh, bw, flip = p.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= H).all() and (left + bw <= W).all()
    area, ratio = bh * bw / (H * W), bw / bh
    assert area.min() >= 0.075 and area.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35  # 3/4 .. 4/3 up to the rounding of the sides
    assert 0.48 < flip.mean() < 0.52

    torch.manual_seed(0)  # torchvision's own draws: the same distribution of areas, ratios and offsets
    ref = np.array([TorchRRC.get_params(torch.empty(1, H, W), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    ref_area, ref_ratio = ref[:, 2] * ref[:, 3] / (H * W), ref[:, 3] / ref[:, 2]
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(np.log(ratio).mean() - np.log(ref_ratio).mean()) < 0.02
    assert abs((top / (H - bh + 1)).mean() - (ref[:, 0] / (H - ref[:, 2] + 1)).mean()) < 0.03

    # images no try fits: torchvision's central fallback with the ratio clamped, exactly
    for fh, fw in ((10, 1000), (1000, 10)):
        fallback = boxes(h[:50], np.full(50, fh), np.full(50, fw)).numpy()[:, :4]
        expected = TorchRRC.get_params(torch.empty(1, fh, fw), [0.08, 1.0], [3 / 4, 4 / 3])
        assert (fallback == np.array(expected)).all(), (fallback[0], expected)


def test_boxes_and_pixels_do_not_depend_on_batch_order_or_worker_count(jpeg_tree, monkeypatch):
    ds = load_dataset("imagefolder", jpeg_tree, image_size=SIZE)
    n = ds.num_train
    whole = ds.view_policy.params(7, 2, np.arange(n))
    perm = np.random.default_rng(1).permutation(n)
    assert torch.equal(ds.view_policy.params(7, 2, perm), whole[perm])
    assert torch.equal(torch.cat([ds.view_policy.params(7, 2, np.arange(s, min(n, s + 5))) for s in range(0, n, 5)]),
                       whole)
    assert not torch.equal(ds.view_policy.params(7, 3, np.arange(n)), whole)
    monkeypatch.setenv("BANDISTILL_DECODE_WORKERS", "1")
    one = ds.train_images.render(whole)
    monkeypatch.setenv("BANDISTILL_DECODE_WORKERS", "3")
    three = ds.train_images.render(whole)
    shuffled = ds.train_images[torch.from_numpy(perm)].render(whole[perm])
    assert one.shape == (n, 3, SIZE, SIZE) and one.dtype == torch.uint8
    assert torch.equal(one, three) and torch.equal(shuffled, one[perm])


def test_the_streaming_source_holds_paths_not_pixels(jpeg_tree):
    ds = load_dataset("imagefolder", jpeg_tree, image_size=SIZE)
    assert ds.image_shape == (3, SIZE, SIZE) and ds.num_train == 18 and ds.classes == ["a", "b", "c"]
    sizes = {tuple(hw) for hw in ds.train_images.hw.tolist()}
    assert len(sizes) > 10  # a tree mixing sizes (and greyscale) is fine for this source
    assert isinstance(ds.train_images.paths, np.ndarray) and ds.train_images.paths.dtype.kind == "S"
    evals = ds.test_images.eval_views()
    assert evals.shape == (6, 3, SIZE, SIZE)
    # the policy is recorded by name and size; another size is another policy
    assert ds.view_policy.to_json() != load_dataset("imagefolder", jpeg_tree, image_size=SIZE + 8).view_policy.to_json()
    assert math.isclose(ds.normalization()[0][0], 0.485, rel_tol=1e-6)


# -- the promise: a cached student sees exactly what a live-teacher student sees ---------------
def test_a_cached_student_sees_what_a_live_teacher_student_sees_on_photos(jpeg_tree, tmp_path):
    from bandistill.dump import dump_logits
    from bandistill.train import TrainConfig, TrainRun, train

    common = dict(model="resnet-8", dataset="imagefolder", data_dir=str(jpeg_tree), image_size=SIZE, epochs=2,
                  batch_size=8, device="cpu")
    gen0 = train(TrainConfig(**common, seed=0), tmp_path / "gen0", progress=False)
    cache = tmp_path / "gen0.h5"
    dump_logits(gen0["checkpoint"], "imagefolder", cache, views="epochs", epochs=2, dtype="float32",
                data_dir=str(jpeg_tree), device="cpu", progress=False)

    class Recording(TrainRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.inputs, self.teachers, loss_fn = [], [], self.loss_fn
            self.loss_fn = lambda logits, labels, t: self.teachers.append(t.detach().clone()) or loss_fn(logits,
                                                                                                         labels, t)

        def _build(self) -> None:
            super()._build()
            self.model.register_forward_pre_hook(
                lambda m, args: self.inputs.append(args[0].detach().clone()) if m.training else None)

    cached = Recording(TrainConfig(**common, seed=5, teacher_logits=str(cache)), tmp_path / "cached", progress=False)
    live = Recording(TrainConfig(**common, seed=5, teacher_checkpoint=gen0["checkpoint"], views="epochs"),
                     tmp_path / "live", progress=False)
    cached.run()
    live.run()
    assert len(cached.inputs) == len(live.inputs) == 2 * 3
    for a, b in zip(cached.inputs, live.inputs):
        assert torch.equal(a, b)  # the same pixels, bit for bit
    for a, b in zip(cached.teachers, live.teachers):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.equal(cached.inputs[0], cached.inputs[3])  # epoch 2 shows other boxes

    # the cache holds the boxes (five int16 per view) and says which policy drew them
    import h5py

    with h5py.File(cache, "r") as f:
        assert f["view_params"].shape == (2, 18, 5) and "random-resized-crop" in str(f.attrs["view_policy"])

    # a student at another --image-size contradicts the cache: one line
    r = run_cli("train", "--model", "resnet-8", "--dataset", "imagefolder", "--data-dir", jpeg_tree,
                "--image-size", SIZE + 8, "--epochs", 1, "--device", "cpu", "--teacher-logits", cache,
                "--out", tmp_path / "other")
    assert_one_line_error(r, "view policy")
    r = run_cli("train", "--model", "resnet-8", "--dataset", "imagefolder", "--data-dir", jpeg_tree,
                "--image-size", SIZE + 8, "--epochs", 1, "--device", "cpu", "--teacher-checkpoint", gen0["checkpoint"],
                "--out", tmp_path / "other-live")
    assert_one_line_error(r, "view policy", "--image-size")


# -- bad input: one line, exit 2 -----------------------------------------------------------------
def test_a_truncated_jpeg_is_one_line_naming_it(tmp_path):
    root = write_jpeg_tree(tmp_path / "t")
    bad = root / "train" / "b" / "0.JPEG"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    r = run_cli("train", "--model", "resnet-8", "--dataset", "imagefolder", "--data-dir", root,
                "--image-size", SIZE, "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--out", tmp_path / "r")
    assert_one_line_error(r, "cannot read image", "0.JPEG")
    (root / "train" / "a" / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="junk.jpg"):
        load_dataset("imagefolder", root, image_size=SIZE)


def test_image_size_and_views_all_refusals(jpeg_tree, tmp_path):
    r = run_cli("train", "--model", "resnet-8", "--dataset", "digits", "--image-size", 16, "--epochs", 1,
                "--device", "cpu", "--out", tmp_path / "d")
    assert_one_line_error(r, "--image-size")
    r = run_cli("train", "--model", "resnet-8", "--dataset", "imagefolder", "--data-dir", jpeg_tree,
                "--image-size", 4, "--epochs", 1, "--device", "cpu", "--out", tmp_path / "s")
    assert_one_line_error(r, "--image-size")
    r = run_cli("ban", "--model", "resnet-8", "--dataset", "imagefolder", "--data-dir", jpeg_tree,
                "--image-size", SIZE, "--views", "all", "--epochs", 1, "--device", "cpu", "--out", tmp_path / "b")
    assert_one_line_error(r, "--views all")


@pytest.mark.slow
def test_torchrun_ranks_decode_their_slices_and_train_what_one_process_trains(jpeg_tree, tmp_path):
    """Under DDP each rank renders only its slice of every global batch (the step indexes the files with the
    rank's slice); the views, and so the losses and weights, are one process's."""
    import json

    from bandistill.checkpoint import load_checkpoint
    from bandistill.train import TrainConfig, train
    from test_distributed import torchrun

    args = dict(model="resnet-8", dataset="imagefolder", data_dir=str(jpeg_tree), image_size=SIZE, epochs=2,
                batch_size=6, device="cpu", sync_bn=True)
    train(TrainConfig(**args), tmp_path / "single", progress=False)
    cli = ["train"] + [x for k, v in args.items() if k != "sync_bn" for x in (f"--{k.replace('_', '-')}", v)]
    ddp = torchrun(*cli, "--sync-bn", "--out", tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / r / "metrics.jsonl")] for r in ("single", "ddp")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = (load_checkpoint(tmp_path / r / "model.pt")["state_dict"] for r in ("single", "ddp"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-4


def test_a_prefetched_batch_is_the_batch_rendered_on_demand(jpeg_tree):
    """The training loop asks for batch s+1 during step s; only exactly those samples and boxes are served from it."""
    ds = load_dataset("imagefolder", jpeg_tree, image_size=SIZE)
    idx = torch.tensor([5, 0, 17, 3])
    params = ds.view_policy.params(1, 0, idx.numpy())
    expected = ds.train_images[idx]._render_now(params.numpy())
    ds.train_images.prefetch(idx, params)
    assert len(ds.train_images._ahead) == 1
    assert torch.equal(ds.train_images[idx].render(params), expected) and not ds.train_images._ahead
    ds.train_images.prefetch(idx, params)
    other = ds.view_policy.params(1, 1, idx.numpy())  # other boxes: rendered on demand, the prefetch left alone
    assert torch.equal(ds.train_images[idx].render(other), ds.train_images[idx]._render_now(other.numpy()))
    assert len(ds.train_images._ahead) == 1
