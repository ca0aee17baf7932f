"""Copying a teacher's first and last layers into a student of another architecture.

The BAN paper's cross-architecture experiments (Table 5) give the Wide-ResNet student the
DenseNet teacher's first and last layers and freeze them. Only tensors are read from the
teacher's checkpoint; the teacher network is never built or run.
"""

from __future__ import annotations

import torch

from bandistill.checkpoint import load_checkpoint
from bandistill.errors import UserError

#: The two layers every zoo model exposes under these attribute names.
END_LAYERS = ("stem", "classifier")


def check_transferable(teacher: str, student: str, num_classes: int, in_channels: int) -> list[str]:
    """The end layers :func:`transfer_ends` would copy from a ``teacher`` into a ``student`` (both built
    empty); :class:`UserError` when it could copy none. Lets ``ban`` refuse before any stage runs."""
    from bandistill.models import build_model

    teacher_state = build_model(teacher, num_classes, in_channels).state_dict()
    return _copy_ends(build_model(student, num_classes, in_channels), teacher_state, freeze=False)


def transfer_ends(student: torch.nn.Module, teacher_checkpoint: str, *, freeze: bool = True) -> list[str]:
    """Copy ``stem`` and ``classifier`` from the checkpoint where shapes match; freeze them.

    Returns the names of the layers copied. Raises :class:`UserError` when none can be.
    """
    return _copy_ends(student, load_checkpoint(teacher_checkpoint)["state_dict"], freeze=freeze)


def _copy_ends(student: torch.nn.Module, teacher_state: dict[str, torch.Tensor], *, freeze: bool) -> list[str]:
    copied, skipped = [], []
    for layer in END_LAYERS:
        module = getattr(student, layer)
        own = module.state_dict()
        theirs = {k: teacher_state.get(f"{layer}.{k}") for k in own}
        if all(v is not None and v.shape == own[k].shape for k, v in theirs.items()):
            module.load_state_dict(theirs)
            if freeze:
                for p in module.parameters():
                    p.requires_grad_(False)
            copied.append(layer)
        else:
            shapes = {k: tuple(v.shape) if v is not None else None for k, v in theirs.items()}
            skipped.append(f"{layer} {shapes} vs {({k: tuple(v.shape) for k, v in own.items()})}")
    if not copied:
        raise UserError(
            f"cannot copy the teacher's first or last layer into this student: shapes differ ({'; '.join(skipped)}); "
            "pick a student whose stem and classifier match, or drop --transfer-ends"
        )
    return copied
