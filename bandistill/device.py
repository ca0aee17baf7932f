"""Choosing the device and the numerics that go with it."""

from __future__ import annotations

import contextlib

import torch

from bandistill.distributed import world
from bandistill.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is a user error.

    Under torchrun, ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    key = (name or "auto").lower()
    if key == "auto":
        key = "cuda" if torch.cuda.is_available() else "cpu"
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for a GPU but none is usable here; use --device cpu or auto")
        if key == "cuda" and world().size > 1:
            return torch.device("cuda", world().local_rank)  # under torchrun: one GPU per process
        return torch.device(key)
    if key == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}': use auto, cpu or cuda")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU (where the same code runs in float32).

    The cast-weight cache is off: a captured CUDA graph (:mod:`bandistill.step`) must not
    keep casts from its capture, and our networks use each weight once per forward anyway.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
