"""Copying a teacher's first and last layers into a student of another architecture.

The BAN paper's cross-architecture experiments (Table 5) give the Wide-ResNet student the
DenseNet teacher's first and last layers and freeze them. Only tensors are read from the
teacher's checkpoint; the teacher network is never built or run.

Which layers are the ends: the zoo names them ``stem`` and ``classifier``; a timm network
says so in its ``pretrained_cfg`` (``first_conv``, ``classifier``); any other network's
first layer is its first ``Conv2d`` and its last the last ``Linear`` with one output per
class. In the teacher's state dict the same layers are the first 4-D weight and the last
2-D weight with one row per class. A network where these cannot be found (a convolutional
classifier, as in SqueezeNet) is refused in one line.
"""

from __future__ import annotations

import torch
from torch import nn

from bandistill.checkpoint import load_checkpoint
from bandistill.errors import UserError

#: The two layers every zoo model exposes under these attribute names.
END_LAYERS = ("stem", "classifier")


def check_transferable(teacher: str, student: str, num_classes: int, in_channels: int,
                       image_shape: tuple[int, ...] | None = None) -> list[str]:
    """The end layers :func:`transfer_ends` would copy from a ``teacher`` into a ``student`` (both built
    empty); :class:`UserError` when it could copy none. Lets ``ban`` refuse before any stage runs."""
    from bandistill.models import build_model, model_options

    def build(name: str) -> nn.Module:
        options = model_options(name, image_shape) if image_shape else {}
        return build_model(name, num_classes, in_channels, **options)

    return _copy_ends(build(student), build(teacher).state_dict(), freeze=False)


def transfer_ends(student: torch.nn.Module, teacher_checkpoint: str, *, freeze: bool = True) -> list[str]:
    """Copy the first and last layers from the checkpoint where shapes match; freeze them.

    Returns the names of the student's layers copied. Raises :class:`UserError` when none can be.
    """
    return _copy_ends(student, load_checkpoint(teacher_checkpoint)["state_dict"], freeze=freeze)


def student_ends(model: nn.Module) -> tuple[str, str]:
    """Names of the first convolution and the classifier of a network (see the module docstring)."""
    modules = dict(model.named_modules())
    if all(isinstance(modules.get(n), (nn.Conv2d, nn.Linear)) for n in END_LAYERS):
        return END_LAYERS
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first, last = cfg.get("first_conv"), cfg.get("classifier")
    if isinstance(modules.get(first), nn.Conv2d) and isinstance(modules.get(last), nn.Linear):
        return first, last
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        what = "convolution" if not convs else "linear classifier"
        raise UserError(f"--transfer-ends cannot find this network's first and last layers (it has no "
                        f"{what}); drop --transfer-ends or pick another student")
    return convs[0], linears[-1]


def teacher_ends(state: dict[str, torch.Tensor]) -> tuple[str | None, str | None]:
    """Module names of the first 4-D weight and the last 2-D weight of a state dict."""
    weights = [(k[: -len(".weight")], v) for k, v in state.items() if k.endswith(".weight")]
    convs = [k for k, v in weights if v.ndim == 4]
    linears = [k for k, v in weights if v.ndim == 2]
    if all(f"{n}.weight" in state for n in END_LAYERS):
        return END_LAYERS
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _copy_ends(student: torch.nn.Module, teacher_state: dict[str, torch.Tensor], *, freeze: bool) -> list[str]:
    copied, skipped = [], []
    for layer, theirs_name in zip(student_ends(student), teacher_ends(teacher_state)):
        module = student.get_submodule(layer)
        own = module.state_dict()
        theirs = {k: teacher_state.get(f"{theirs_name}.{k}") if theirs_name else None for k in own}
        if all(v is not None and v.shape == own[k].shape for k, v in theirs.items()):
            module.load_state_dict(theirs)
            if freeze:
                for p in module.parameters():
                    p.requires_grad_(False)
            copied.append(layer)
        else:
            shapes = {k: tuple(v.shape) if v is not None else None for k, v in theirs.items()}
            skipped.append(f"{theirs_name} {shapes} vs {layer} {({k: tuple(v.shape) for k, v in own.items()})}")
    if not copied:
        raise UserError(
            f"cannot copy the teacher's first or last layer into this student: shapes differ ({'; '.join(skipped)}); "
            "pick a student whose first and last layers match, or drop --transfer-ends"
        )
    return copied
