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
    return checked_checkpoint(ckpt, path)


def checked_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``ckpt``, what ``torch.load`` read from ``path``, if it is a bandistill checkpoint every reader can use;
    else :class:`UserError` saying why. For a caller that has loaded the file already (no second read)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a bandistill checkpoint; pass a model.pt written by 'bandistill train'")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer bandistill (format {ckpt['format_version']}); upgrade bandistill")
    problem = _missing_part(ckpt)
    if problem:
        raise UserError(f"{path} lacks {problem} (edited, or not written by 'bandistill train'); retrain it or pick "
                        "another checkpoint")
    return ckpt


def _missing_part(ckpt: dict[str, Any]) -> str | None:
    """What of the parts every reader needs (spec, weights, data, normalisation) is absent or mistyped."""
    model, data, norm, weights = (ckpt.get(k) for k in ("model", "dataset", "normalization", "state_dict"))
    if not isinstance(model, dict):
        return "its 'model' entry (the architecture)"
    if not (isinstance(model.get("name"), str) and _count(model.get("num_classes"))
            and _count(model.get("in_channels")) and isinstance(model.get("options", {}), dict)):
        return "a valid 'model' entry (name, num_classes, in_channels)"
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its 'state_dict' entry (the weights)"
    if not isinstance(data, dict) or not (isinstance(data.get("name"), str) and isinstance(data.get("fingerprint"), str)):
        return "its 'dataset' entry (the data it was trained on)"
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), (list, tuple)) for k in ("mean", "std")):
        return "its 'normalization' entry (the input mean and std)"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (eval mode).

    :class:`UserError` when the weights do not fit the spec (a model name or class count
    edited, weights from another network) or are not finite: a damaged input, the user's to fix.
    """
    from bandistill.models import build_model

    spec = ckpt["model"]
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], **spec.get("options", {}))
    misfit = _misfit(model.state_dict(), ckpt["state_dict"])
    if misfit:
        what = f"{spec['name']} with {spec['num_classes']} classes and {spec['in_channels']} input channels"
        raise UserError(f"the checkpoint's weights do not fit its model ({what}): {misfit}; the file was edited "
                        "or damaged: retrain it or pick another checkpoint")
    model.load_state_dict(ckpt["state_dict"])
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"the checkpoint's weights are not finite (NaN or inf in {bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): it is broken; retrain it or pick "
                        "another checkpoint")
    return model.eval()


def _misfit(expected: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> str | None:
    """How stored weights differ from what the model holds, in a few words (None: they fit)."""
    for key, want in expected.items():
        if key in stored and tuple(stored[key].shape) != tuple(want.shape):
            return f"{key} is {list(stored[key].shape)} in the file but {list(want.shape)} in the model"
    for names, how in (([k for k in expected if k not in stored], "missing"),
                       ([k for k in stored if k not in expected], "not in the model")):
        if names:
            return f"{len(names)} tensor{'s' if len(names) > 1 else ''} {how} ({names[0]}{', ...' if len(names) > 1 else ''})"
    return None


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
    return load_dataset(name or ckpt["dataset"]["name"], data_dir, val_split=float(config.get("val_split") or 0.0),
                        image_size=config.get("image_size"))
