"""An ImageFolder tree is decoded once per content: memory, then disk, never stale."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from bandistill.data import decoded_cache, imagefolder, load_dataset


@pytest.fixture
def decodes(monkeypatch, tmp_path):
    """Count real decodes (the real decoder runs), with a private cache dir and an empty memory."""
    calls = []
    real = imagefolder.decode_imagefolder

    def counting(data_dir):
        calls.append(data_dir)
        return real(data_dir)

    monkeypatch.setattr(imagefolder, "decode_imagefolder", counting)
    monkeypatch.setenv("BANDISTILL_CACHE_DIR", str(tmp_path / "decoded"))
    monkeypatch.setattr(decoded_cache, "_memory", decoded_cache.OrderedDict())
    return calls


def _same(a, b) -> bool:
    return (a.fingerprint == b.fingerprint and a.classes == b.classes and a.view_policy == b.view_policy
            and torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels))


def test_a_tree_is_decoded_once_then_served_from_memory_and_from_disk(imagefolder_dir, decodes, tmp_path):
    first = load_dataset("imagefolder", imagefolder_dir)
    assert load_dataset("imagefolder", imagefolder_dir) is first and len(decodes) == 1
    (saved,) = (tmp_path / "decoded").glob("*.npz")
    decoded_cache._memory.clear()  # a new process
    again = load_dataset("imagefolder", imagefolder_dir, val_split=0.25)
    assert len(decodes) == 1 and again.val_images is not None
    assert _same(load_dataset("imagefolder", imagefolder_dir), first)

    saved.write_bytes(saved.read_bytes()[:100])  # a damaged copy is decoded again, not trusted
    decoded_cache._memory.clear()
    assert _same(load_dataset("imagefolder", imagefolder_dir), first) and len(decodes) == 2


def test_a_changed_tree_is_never_served_stale(imagefolder_dir, decodes):
    first = load_dataset("imagefolder", imagefolder_dir)
    img = imagefolder_dir / "train" / "cat" / "0.png"
    stat = img.stat()
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)
    os.utime(img, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time stamp: content decides
    changed = load_dataset("imagefolder", imagefolder_dir)
    assert len(decodes) == 2 and changed.fingerprint != first.fingerprint

    (imagefolder_dir / "train" / "zebra").mkdir()  # a new class (it needs a training image to be one)
    Image.fromarray(arr).save(imagefolder_dir / "train" / "zebra" / "0.png")
    assert load_dataset("imagefolder", imagefolder_dir).classes[-1] == "zebra" and len(decodes) == 3


def test_the_disk_copy_can_be_turned_off(imagefolder_dir, decodes, monkeypatch, tmp_path):
    monkeypatch.setenv("BANDISTILL_CACHE_DIR", "off")
    load_dataset("imagefolder", imagefolder_dir)
    decoded_cache._memory.clear()
    load_dataset("imagefolder", imagefolder_dir)
    assert len(decodes) == 2 and not (tmp_path / "decoded").exists()


def test_a_full_cache_dir_costs_speed_never_the_run(imagefolder_dir, tmp_path):
    """The disk copy failing for lack of space (EFBIG under a file size limit, like ENOSPC) used to stop the run."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        from bandistill.data import load_dataset
        print(load_dataset("imagefolder", sys.argv[1]).train_images.shape[0])
    """)
    env = {**os.environ, "BANDISTILL_CACHE_DIR": str(tmp_path / "full"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(imagefolder_dir)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "12", out.stdout + out.stderr
    assert not list((tmp_path / "full").glob("*"))  # no half-written copy left behind
