"""Shared fixtures: tiny datasets in the real on-disk formats, and a trained digits run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner


def write_cifar(root: Path, key: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write torchvision's CIFAR pickle layout with random images under ``root``."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if key == "cifar10" else 100
    if key == "cifar10":
        folder = root / "cifar-10-batches-py"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key = "test_batch", "batches.meta", "labels", "label_names"
    else:
        folder = root / "cifar-100-python"
        train_files = ["train"]
        test_file, meta_file, label_key, names_key = "test", "meta", "fine_labels", "fine_label_names"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, n_classes, size=n)],
        }

    per_file = n_train // len(train_files)
    for name in train_files:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(per_file), f)
    with open(folder / test_file, "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / meta_file, "wb") as f:
        pickle.dump({names_key: [f"class{i}" for i in range(n_classes)]}, f)
    return root


def write_imagefolder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 4, size=(12, 12),
                      test_name: str = "test") -> Path:
    """Write an ImageFolder tree of small PNGs (a colour per class plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), (test_name, max(1, per_class // 2))):
        for c, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 60, size=(*size, 3), dtype=np.uint8)
                arr[..., c % 3] += 150
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data", "cifar10")


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data", "cifar100", n_train=40, n_test=10)


@pytest.fixture
def imagefolder_dir(tmp_path: Path) -> Path:
    return write_imagefolder(tmp_path / "tree")


@pytest.fixture(scope="session")
def digits_gen0(tmp_path_factory) -> dict:
    """A resnet-20 trained for 2 epochs on digits (about 3 s); its train() result."""
    from bandistill.train import TrainConfig, train

    out = tmp_path_factory.mktemp("gen0")
    return train(TrainConfig(model="resnet-20", dataset="digits", epochs=2, seed=0, device="cpu"), out, progress=False)


@pytest.fixture(scope="session")
def digits():
    """The digits dataset (read-only: tests must not modify its tensors)."""
    from bandistill.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_teacher(digits_gen0) -> Path:
    """The model.pt of :func:`digits_gen0` (copy it before deleting or damaging it)."""
    return Path(digits_gen0["checkpoint"])


@pytest.fixture(scope="session")
def digits_cache(digits_teacher, tmp_path_factory) -> Path:
    """A complete 4-view cache of the digits teacher (copy it before modifying it)."""
    from bandistill.dump import dump_logits

    out = tmp_path_factory.mktemp("cache") / "gen0.h5"
    dump_logits(digits_teacher, "digits", out, views=4, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared 2-core box, two spinning
    OpenMP threads next to another busy process slow them down 50x. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args):
    """Invoke the ``bandistill`` command group in-process (arguments may be paths or numbers)."""
    from bandistill.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    """The command failed with ``code`` and one line on stderr, with no traceback.

    A user error (code 2) prints nothing else at all; a failed self-check (code 1) may
    have printed its report on stdout first.
    """
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, result.output
    if code == 2:
        assert [line for line in result.output.splitlines() if line.strip()] == [err], result.output
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(autouse=True, scope="session")
def _decoded_cache_in_a_temp_dir(tmp_path_factory):
    """Decoded ImageFolder copies go to a temp dir, never the user's ~/.cache (see bandistill.data.decoded_cache)."""
    import os

    old = os.environ.get("BANDISTILL_CACHE_DIR")
    os.environ["BANDISTILL_CACHE_DIR"] = str(tmp_path_factory.mktemp("decoded-cache"))
    yield
    if old is None:
        os.environ.pop("BANDISTILL_CACHE_DIR", None)
    else:
        os.environ["BANDISTILL_CACHE_DIR"] = old
