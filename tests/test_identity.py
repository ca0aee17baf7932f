"""Content identity: the same meaning gives the same digest, whatever the bytes, paths or times."""

from __future__ import annotations

import shutil
import time

import h5py
import numpy as np
import torch

from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.dump import dump_logits
from bandistill.identity import cache_digest, checkpoint_digest, file_digest, output_digest


def test_a_checkpoint_saved_again_has_the_same_identity_but_other_bytes(digits_teacher, tmp_path):
    ckpt = load_checkpoint(digits_teacher)
    ckpt["history"] = [dict(h, seconds=h["seconds"] + 1.0) for h in ckpt["history"]]  # other timings
    again = tmp_path / "elsewhere" / "model.pt"
    save_checkpoint(ckpt, again)  # another temp name recorded inside the zip
    assert file_digest(again) != file_digest(digits_teacher)
    assert checkpoint_digest(again) == checkpoint_digest(digits_teacher)

    ckpt["state_dict"] = dict(ckpt["state_dict"])
    w = ckpt["state_dict"]["classifier.bias"].clone()
    w[0] += 1e-3
    ckpt["state_dict"]["classifier.bias"] = w
    save_checkpoint(ckpt, tmp_path / "changed.pt")
    assert checkpoint_digest(tmp_path / "changed.pt") != checkpoint_digest(digits_teacher)


def test_a_cache_dumped_again_has_the_same_identity_but_other_bytes(digits_teacher, digits_cache, tmp_path):
    """created_at and the teacher's absolute path used to change the cache's digest."""
    teacher = tmp_path / "moved" / "model.pt"
    teacher.parent.mkdir()
    shutil.copy(digits_teacher, teacher)
    time.sleep(1.1)  # another created_at
    again = tmp_path / "again.h5"
    dump_logits(teacher, "digits", again, views=4, device="cpu", progress=False)
    assert file_digest(again) != file_digest(digits_cache)
    assert cache_digest(again) == cache_digest(digits_cache) == output_digest(again)


def test_cache_identity_covers_every_array_and_identity_attribute(digits_cache, tmp_path):
    base = cache_digest(digits_cache)

    def variant(name, change):
        path = tmp_path / f"{name}.h5"
        shutil.copy(digits_cache, path)
        with h5py.File(path, "r+") as f:
            change(f)
        return cache_digest(path)

    def one_logit(f):
        f["logits"][0, 0, 0] = f["logits"][0, 0, 0] + np.float16(0.5)

    assert variant("logit", one_logit) != base
    assert variant("seed", lambda f: f.attrs.__setitem__("seed", 7)) != base
    # a format that adds arrays (top-k indices, log-sum-exp ...) is covered without a change to identity.py
    assert variant("extra", lambda f: f.create_dataset("topk_indices", data=np.zeros((2, 3), np.int32))) != base
    # provenance is not identity
    assert variant("when", lambda f: f.attrs.__setitem__("created_at", "1999-01-01")) == base
    assert variant("device", lambda f: f.attrs.__setitem__("device", "cuda")) == base


def test_output_digest_never_raises_on_a_damaged_file(digits_teacher, digits_cache, tmp_path):
    for src in (digits_teacher, digits_cache):
        cut = tmp_path / src.name
        cut.write_bytes(src.read_bytes()[:2000])
        assert output_digest(cut).startswith("damaged:") or output_digest(cut) == file_digest(cut)
    text = tmp_path / "evaluation.json"
    text.write_text("{}")
    assert output_digest(text) == file_digest(text)


def test_bfloat16_weights_have_an_identity(tmp_path):
    from bandistill.identity import checkpoint_identity

    a = {"model": {"name": "x"}, "state_dict": {"w": torch.ones(3, dtype=torch.bfloat16)}}
    b = {"model": {"name": "x"}, "state_dict": {"w": torch.full((3,), 2.0, dtype=torch.bfloat16)}}
    assert checkpoint_identity(a) != checkpoint_identity(b)
