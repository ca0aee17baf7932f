"""A damaged or hand-edited cache is one line and exit 2 wherever it is read (issue 20, items 13 and 14).

Each case edits a copy of the digits cache the way a broken tool or a hand edit would; a student must
refuse it before its first step (these were tracebacks, or, for int32 logits under a float16 label,
a silently 100x sharper teacher).
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _no_views(f: h5py.File) -> None:
    """A fixed plan of 0 views, consistent everywhere."""
    n, c = f["logits"].shape[1:]
    f.attrs["num_views"] = 0
    f.attrs["view_plan"] = json.dumps({"kind": "fixed", "num_views": 0, "seed": 0})
    _replace(f, "logits", np.zeros((0, n, c), np.float16))
    _replace(f, "view_params", np.zeros((0, n, 3), np.int16))
    _replace(f, "views_complete", np.zeros((0,), np.uint8))


EDITS = {
    "num_classes a word": (lambda f: f.attrs.__setitem__("num_classes", "ten"), "num_classes attribute"),
    "seed a word": (lambda f: f.attrs.__setitem__("seed", "zero"), "seed attribute"),
    "teacher a list": (lambda f: f.attrs.__setitem__("teacher", [1, 2]), "teacher attribute"),
    "teacher an int": (lambda f: f.attrs.__setitem__("teacher", 5), "teacher attribute"),
    "teacher JSON of a list": (lambda f: f.attrs.__setitem__("teacher", "[1, 2]"), "teacher attribute"),
    "logits as bytes": (lambda f: _replace(f, "logits", f["logits"][()].astype("S2")), "logits is stored as"),
    "int32 logits labelled float16": (
        lambda f: _replace(f, "logits", np.round(f["logits"][()].astype(np.float32) * 100).astype(np.int32)),
        "logits is stored as int32"),
    "2-column view params": (lambda f: _replace(f, "view_params", f["view_params"][:, :, :2]), "view_params has shape"),
    "fixed plan of 0 views": (_no_views, "num_views attribute"),
    "dtype a word": (lambda f: f.attrs.__setitem__("dtype", "float8"), "dtype attribute"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_damaged_cache_is_one_line_for_a_student(digits_cache, tmp_path, case):
    edit, fragment = EDITS[case]
    cache = tmp_path / "c.h5"
    shutil.copy(digits_cache, cache)
    with h5py.File(cache, "r+") as f:
        edit(f)
    result = run_cli("train", "--model", "resnet-8", "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                     "--teacher-logits", cache, "--out", tmp_path / "run")
    assert_one_line_error(result, f"cache {cache} is damaged", fragment, "dump the cache again")


def test_a_damaged_cache_is_one_line_for_verify_cache(digits_teacher, digits_cache, tmp_path):
    cache = tmp_path / "c.h5"
    shutil.copy(digits_cache, cache)
    with h5py.File(cache, "r+") as f:
        f.attrs["num_classes"] = "ten"
    result = run_cli("verify-cache", "--checkpoint", digits_teacher, "--cache", cache, "--device", "cpu")
    assert_one_line_error(result, "num_classes attribute")
