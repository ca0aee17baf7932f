"""Datasets from their real on-disk formats, fingerprints and clear refusals."""

from __future__ import annotations


import pytest
import torch

from bandistill.data import load_dataset
from bandistill.errors import UserError
from conftest import write_cifar, write_imagefolder


def test_digits_is_a_fixed_split_with_a_stable_fingerprint():
    a, b = load_dataset("digits"), load_dataset("DIGITS")
    assert a.train_images.shape == (1438, 1, 8, 8) and a.test_images.shape == (359, 1, 8, 8)
    assert a.train_images.dtype == torch.uint8 and a.num_classes == 10
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert int(a.train_images.max()) == 255


def test_cifar10_from_torchvision_pickles(cifar10_dir):
    ds = load_dataset("cifar10", cifar10_dir)
    assert ds.train_images.shape == (50, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert ds.classes[0] == "class0" and ds.num_classes == 10
    assert ds.view_policy.pad == 4 and ds.view_policy.flip


def test_cifar100_from_torchvision_pickles(cifar100_dir):
    ds = load_dataset("cifar100", cifar100_dir)
    assert ds.num_classes == 100 and ds.train_images.shape == (40, 3, 32, 32)


def test_fingerprint_changes_with_one_label(tmp_path):
    a = load_dataset("cifar10", write_cifar(tmp_path / "a"))
    b_root = write_cifar(tmp_path / "b")
    import pickle

    path = b_root / "cifar-10-batches-py" / "data_batch_3"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][0] = (batch["labels"][0] + 1) % 10
    path.write_bytes(pickle.dumps(batch))
    assert load_dataset("cifar10", b_root).fingerprint != a.fingerprint


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*--data-dir"):
        load_dataset("cifar10", tmp_path)


def test_damaged_cifar_file_is_named(cifar10_dir):
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="data_batch_2 is damaged"):
        load_dataset("cifar10", cifar10_dir)


def test_imagefolder_with_test_or_val(tmp_path):
    ds = load_dataset("imagefolder", write_imagefolder(tmp_path / "t"))
    assert ds.classes == ["cat", "dog", "emu"] and ds.train_images.shape == (12, 3, 12, 12)
    assert ds.test_images.shape[0] == 6
    val = load_dataset("imagefolder", write_imagefolder(tmp_path / "v", test_name="val"))
    assert val.fingerprint == ds.fingerprint


def test_imagefolder_refusals(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        load_dataset("imagefolder", None)
    with pytest.raises(UserError, match="not an ImageFolder tree"):
        load_dataset("imagefolder", tmp_path)
    root = write_imagefolder(tmp_path / "bad")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_dataset("imagefolder", root)


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean cifar100"):
        load_dataset("cifar-100")


def test_val_split_is_fixed_and_changes_the_fingerprint():
    full = load_dataset("digits")
    a, b = load_dataset("digits", val_split=0.1), load_dataset("digits", val_split=0.1)
    assert a.val_images.shape[0] == 144 and a.num_train == full.num_train - 144
    assert torch.equal(a.val_labels, b.val_labels) and a.fingerprint == b.fingerprint != full.fingerprint
    with pytest.raises(UserError, match="--val-split"):
        load_dataset("digits", val_split=1.5)


# -- ImageFolder trees that used to give silent garbage ------------------------------------------
def _png(path, arr, mode=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


def test_imagefolder_16bit_grayscale_keeps_its_levels(tmp_path):
    """PIL's convert('L') clipped 16-bit images to 0 and 255; they are scaled instead."""
    import numpy as np

    levels = np.array([[0, 257 * 10, 257 * 100], [257 * 200, 65535, 257 * 50], [1000, 30000, 60000]], np.uint16)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _png(tmp_path / split / cls / "x.png", levels)  # uint16: a 16-bit grayscale PNG
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.train_images.shape == (2, 1, 3, 3)
    assert ds.train_images[0, 0].tolist() == [[0, 10, 100], [200, 255, 50], [4, 117, 233]]


def test_imagefolder_uses_the_majority_size_and_mode(tmp_path):
    """The first image used to decide: one small or grayscale first image shrank or greyed the whole set."""
    import numpy as np

    root = write_imagefolder(tmp_path / "t", per_class=4, size=(12, 12))
    _png(root / "train" / "cat" / "0.png", np.full((5, 5), 128, np.uint8))  # first file: small and grayscale
    ds = load_dataset("imagefolder", root)
    assert ds.train_images.shape == (12, 3, 12, 12) and ds.test_images.shape[1:] == (3, 12, 12)


def test_imagefolder_without_a_majority_size_is_refused(tmp_path):
    import numpy as np

    for i, side in enumerate((8, 9, 10, 11)):
        _png(tmp_path / "train" / f"c{i % 2}" / f"{i}.png", np.zeros((side, side, 3), np.uint8))
    _png(tmp_path / "test" / "c0" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="no majority size"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_skips_hidden_folders_and_files(tmp_path):
    """.ipynb_checkpoints/ used to become class 0 and shift every label."""
    root = write_imagefolder(tmp_path / "t")
    plain = load_dataset("imagefolder", root)
    for split in ("train", "test"):
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        (hidden / "x.png").write_bytes((root / split / "cat" / "0.png").read_bytes())
    (root / "train" / "cat" / ".DS_Store.png").write_bytes(b"junk")
    ds = load_dataset("imagefolder", root)
    assert ds.classes == ["cat", "dog", "emu"] and ds.fingerprint == plain.fingerprint


def test_imagefolder_class_without_training_images_is_refused(tmp_path):
    root = write_imagefolder(tmp_path / "t")
    for f in (root / "train" / "emu").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"emu holds no images"):
        load_dataset("imagefolder", root)


def test_val_split_that_leaves_no_training_image_is_refused():
    with pytest.raises(UserError, match=r"--val-split 0.9999 leaves 0 of 1438 training images"):
        load_dataset("digits", val_split=0.9999)
    with pytest.raises(UserError, match="has none"):
        load_dataset("digits", val_split=0.995)  # 7 training images: some digits have none


def test_the_data_layer_imports_nothing_above_it():
    """bandistill.data used to import checkpoint (for atomic_write), which imports data: a circle."""
    import subprocess
    import sys

    code = ("import sys, bandistill.data, bandistill.data.decoded_cache; "
            "above = sorted(m for m in sys.modules if m.split('.')[:2] in (['bandistill', 'checkpoint'], "
            "['bandistill', 'identity'], ['bandistill', 'train'], ['bandistill', 'cache'])); print(above)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# -- issue 20: trees that hung or crashed the loader, and work done again for every stage ---------
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb; no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path):
    root = write_imagefolder(tmp_path / "t")
    (root / "train" / "dog" / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    with pytest.raises(UserError, match=r"cannot read image .*bomb\.png"):
        load_dataset("imagefolder", root)


def test_a_symlink_loop_in_the_tree_is_walked_once(tmp_path):
    """os.walk(followlinks=True) never ended on two links to a folder above (2^depth paths)."""
    import os
    import subprocess
    import sys

    root = write_imagefolder(tmp_path / "t")
    for name in ("up", "again"):
        os.symlink(root / "train", root / "train" / "cat" / name)
    code = ("import sys; from bandistill.data import load_dataset; "
            "print(load_dataset('imagefolder', sys.argv[1]).train_images.shape[0])")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a tree with a symlink loop did not finish in 60 s")
    assert out.returncode == 0 and out.stdout.strip() == "12", out.stderr


def test_a_dataset_is_read_and_fingerprinted_once_per_process(tmp_path, monkeypatch):
    """Every ban stage used to unpickle CIFAR and re-hash an ImageFolder tree served from memory."""
    import os

    from bandistill.data import builtin, decoded_cache

    reads, hashes = [], []
    real_read, real_digest = builtin._read_pickle, decoded_cache.tree_digest
    monkeypatch.setattr(builtin, "_read_pickle", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(decoded_cache, "tree_digest", lambda *a: hashes.append(a) or real_digest(*a))

    cifar = write_cifar(tmp_path / "c")
    first = load_dataset("cifar10", cifar, val_split=0.2)
    n = len(reads)
    assert load_dataset("cifar10", cifar, val_split=0.2) is first and len(reads) == n
    assert load_dataset("cifar10", cifar).fingerprint != first.fingerprint and len(reads) == n
    batch = cifar / "cifar-10-batches-py" / "data_batch_1"
    stat = batch.stat()
    batch.write_bytes(batch.read_bytes())  # rewritten (same bytes here): read again, never served stale
    os.utime(batch, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    load_dataset("cifar10", cifar)
    assert len(reads) == 2 * n

    tree = write_imagefolder(tmp_path / "t")
    ds = load_dataset("imagefolder", tree)
    assert load_dataset("imagefolder", tree) is ds and len(hashes) == 1
    (tree / "train" / "cat" / "0.png").write_bytes((tree / "train" / "dog" / "0.png").read_bytes())
    assert load_dataset("imagefolder", tree).fingerprint != ds.fingerprint and len(hashes) == 2
