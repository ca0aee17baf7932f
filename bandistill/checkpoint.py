"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

They are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from bandistill.atomic import atomic_write  # noqa: F401  (re-exported: callers import it from here)
from bandistill.errors import UserError

FORMAT = "bandistill-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Save a checkpoint dict atomically."""
    def write(tmp: str) -> None:
        # Serialised in memory, then written by Python: a full disk is then an OSError (torch's own
        # writer raises a RuntimeError that says only "file write failed").
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **obj}, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())

    atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bandistill checkpoint, or raise :class:`UserError` saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the model.pt written by 'bandistill train'")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        # torch's own words ("[Errno 22] Invalid argument", "internal miniz error") say nothing to a user
        raise UserError(f"{path} is truncated or damaged (not a readable checkpoint); resume its run to rewrite "
                        "it, retrain, or pick another file") from None
    except Exception as exc:  # pickle.UnpicklingError and friends from weights_only
        raise UserError(f"{path} is not a bandistill checkpoint ({type(exc).__name__}); pass a model.pt from 'bandistill train'") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a bandistill checkpoint; pass a model.pt written by 'bandistill train'")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer bandistill (format {ckpt['format_version']}); upgrade bandistill")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (eval mode)."""
    from bandistill.models import build_model

    spec = ckpt["model"]
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], **spec.get("options", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def normalization(ckpt: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std (float32, images in [0, 1]) the checkpoint's model was trained with."""
    norm = ckpt["normalization"]
    return torch.tensor(norm["mean"], dtype=torch.float32), torch.tensor(norm["std"], dtype=torch.float32)


def checkpoint_dataset(ckpt: dict[str, Any], name: str | None = None, data_dir: str | os.PathLike | None = None):
    """Load dataset ``name`` (default: the checkpoint's) with the validation split the run carved.

    A run trained with ``--val-split`` saw a reduced train split; its logits, parity checks
    and fingerprints refer to that split, so every reader of a checkpoint loads it the same way.
    """
    from bandistill.data import load_dataset

    config = ckpt.get("config") or {}
    return load_dataset(name or ckpt["dataset"]["name"], data_dir, val_split=float(config.get("val_split") or 0.0))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (short form). Lineage and the manifest use content digests
    instead (:mod:`bandistill.identity`); this one is kept for files read before those existed."""
    from bandistill.identity import file_digest as bytes_digest

    return bytes_digest(path)


def lineage_chain(checkpoint: str | Path) -> list[dict[str, Any]]:
    """A checkpoint's ancestry, newest first: ``[{generation, model, ..., loss, cache}, ..., gen 0]``.

    Read from the checkpoint alone (each student's lineage embeds its teacher's), so the
    caches and the older checkpoints need not exist any more.
    """
    from bandistill.identity import checkpoint_digest

    ckpt = load_checkpoint(checkpoint)
    chain = [{
        "generation": int(ckpt.get("generation") or 0),
        "model": ckpt["model"]["name"],
        "checkpoint": str(checkpoint),
        "checkpoint_digest": checkpoint_digest(checkpoint),
        "test_accuracy": (ckpt.get("metrics") or {}).get("test_accuracy"),
    }]
    link = ckpt.get("teacher")
    while link:
        chain[-1].update(loss=link.get("loss"), cache=link.get("cache"), cache_digest=link.get("cache_digest"))
        chain.append({
            "generation": link.get("teacher_generation"),
            "model": link.get("teacher_model"),
            "checkpoint": link.get("teacher_checkpoint"),
            "checkpoint_digest": link.get("teacher_checkpoint_digest"),
        })
        link = link.get("teacher_lineage")
    return chain
