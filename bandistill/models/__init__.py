"""Model zoo: CIFAR DenseNet-BC, Wide-ResNet and ResNet, built from a name.

Names (case-insensitive):

* ``densenet-bc-<depth>-<growth>`` -- Huang et al., "Densely Connected Convolutional
  Networks", CVPR 2017; depth 6n+4.
* ``wrn-<depth>-<width>`` -- Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016;
  depth 6n+4.
* ``resnet-<depth>`` -- He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016 (CIFAR variant); depth 6n+2.

The Born-Again Networks paper (Furlanello et al., ICML 2018) also uses DenseNet-80-80,
-80-120 and -90-60, whose depths are not 6n+4; those exact names are accepted and built,
like the reference implementations do, with floor((depth-4)/6) layers per block.

Every model exposes ``stem`` (its first conv) and ``classifier`` (its final linear layer).

Any torchvision or timm classification network is built by name too: ``torchvision/resnet50``,
``timm/efficientnet_b0`` (see :mod:`bandistill.models.libraries`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from bandistill.errors import UserError
from bandistill.models.densenet import DenseNetBC
from bandistill.models.libraries import (
    build_library_model, is_library_name, library_models, needs_image_size, split_name, validate_library_name,
)
from bandistill.models.resnet import ResNet
from bandistill.models.wrn import WideResNet

__all__ = [
    "build_model",
    "count_parameters",
    "default_weight_decay",
    "list_models",
    "model_family",
    "model_options",
    "validate_model_name",
]

_EXAMPLES = [
    "densenet-bc-100-12",
    "densenet-bc-250-24",
    "densenet-bc-190-40",
    "densenet-bc-112-33",
    "densenet-bc-90-60",
    "densenet-bc-80-80",
    "densenet-bc-80-120",
    "wrn-16-4",
    "wrn-16-8",
    "wrn-28-10",
    "wrn-40-4",
    "resnet-20",
    "resnet-32",
    "resnet-44",
    "resnet-56",
    "resnet-110",
]
# BAN paper names whose depth is not 6n+4 (see the module docstring).
_BAN_DENSENETS = {"densenet-bc-80-80", "densenet-bc-80-120", "densenet-bc-90-60"}

_NAME_RE = re.compile(r"(densenet-bc|wrn)-(\d+)-(\d+)|(resnet)-(\d+)", re.ASCII)
_FORMS = "densenet-bc-<depth>-<growth>, wrn-<depth>-<width>, resnet-<depth>, torchvision/<name> or timm/<name>"
_WEIGHT_DECAY = {"densenet-bc": 1e-4, "wrn": 5e-4, "resnet": 1e-4, "torchvision": 1e-4, "timm": 1e-4}


@dataclass(frozen=True)
class _Spec:
    family: str
    depth: int
    width: int = 0  # growth rate for densenet-bc, widening factor for wrn, unused for resnet

    @property
    def name(self) -> str:
        if self.family == "resnet":
            return f"resnet-{self.depth}"
        return f"{self.family}-{self.depth}-{self.width}"


def _nearest_depth(depth: int, offset: int) -> int:
    """The depth of the form 6n+offset (n >= 1) closest to ``depth``."""
    return 6 * max(1, round((depth - offset) / 6)) + offset


def _name_error(name: str, reason: str, fix: str | None = None) -> UserError:
    """One-line error naming ``name``, the rule it breaks and the closest valid names."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    close = difflib.get_close_matches(key, _EXAMPLES, n=3)
    suggestions = ([fix] if fix else []) + [s for s in close if s != fix]
    bare = name.strip()
    if not fix and "/" not in bare:  # a torchvision/timm builder typed without its library ("resnet50")
        libs = [f"{lib}/{bare}" for lib in ("torchvision", "timm") if bare in library_models(lib)]
        suggestions = libs + suggestions
    if suggestions:
        *rest, last = suggestions[:3]
        hint = f"; did you mean {', '.join(rest) + ' or ' if rest else ''}{last}?"
    else:
        hint = " (e.g. densenet-bc-100-12, wrn-28-10, resnet-56)"
    return UserError(f"unknown model {name!r}: {reason}{hint}")


def _parse(name: str) -> _Spec:
    key = name.strip().lower() if isinstance(name, str) else ""
    match = _NAME_RE.fullmatch(key)
    if match is None:
        raise _name_error(str(name), f"model names are {_FORMS}")
    if match.group(4):
        spec = _Spec("resnet", int(match.group(5)))
    else:
        spec = _Spec(match.group(1), int(match.group(2)), int(match.group(3)))

    if spec.family == "resnet":
        if spec.depth < 8 or (spec.depth - 2) % 6:
            fix = _Spec("resnet", _nearest_depth(spec.depth, 2)).name
            rule = "CIFAR ResNet depth must be 6n+2 (e.g. 20, 32, 44, 56, 110)"
            raise _name_error(name, rule, fix)
        return spec
    is_densenet = spec.family == "densenet-bc"
    label, what = ("DenseNet-BC", "growth rate") if is_densenet else ("WRN", "width")
    if spec.width < 1:
        fix = _Spec(spec.family, spec.depth, 1).name
        raise _name_error(name, f"{label} {what} must be >= 1", fix)
    if (spec.depth < 10 or (spec.depth - 4) % 6) and spec.name not in _BAN_DENSENETS:
        fix = _Spec(spec.family, _nearest_depth(spec.depth, 4), spec.width).name
        example = 100 if is_densenet else 28
        raise _name_error(name, f"{label} depth must be 6n+4 (e.g. {example})", fix)
    return spec


def validate_model_name(name: str) -> str:
    """Return the normalised model name (zoo names lower-cased; ``library/builder`` as the
    library spells it), or raise :class:`UserError` suggesting close names."""
    if is_library_name(name):
        return validate_library_name(name)
    return _parse(name).name


def list_models() -> list[str]:
    """Example names: the DenseNet-BC, WRN and ResNet configurations of the papers."""
    return list(_EXAMPLES)


def model_family(name: str) -> str:
    """``"densenet-bc"``, ``"wrn"`` or ``"resnet"``; ``"torchvision"`` or ``"timm"`` for library networks."""
    if is_library_name(name):
        return split_name(validate_library_name(name))[0]
    return _parse(name).family


def default_weight_decay(name: str) -> float:
    """The paper's weight decay: 1e-4 for DenseNet-BC and ResNet, 5e-4 for WRN; 1e-4 for
    torchvision/timm networks (torchvision's ImageNet recipe for ResNets)."""
    return _WEIGHT_DECAY[model_family(name)]


def model_options(name: str, image_shape: tuple[int, ...] | list[int]) -> dict:
    """Build options a network needs from its data: ``image_size`` for those whose input size is
    fixed when built (ViT, MaxViT, timm's fixed-size models); nothing for the others."""
    if is_library_name(name) and needs_image_size(name):
        return {"image_size": [int(image_shape[-2]), int(image_shape[-1])]}
    return {}


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    memory_efficient: bool = False,
    dropout: float = 0.0,
    image_size: list[int] | tuple[int, int] | None = None,
) -> torch.nn.Module:
    """Build a freshly (Kaiming-)initialised model from its name.

    ``memory_efficient`` applies to densenet-bc only and ``dropout`` to wrn only; giving
    a non-default value for a family it does not apply to raises :class:`UserError`.
    torchvision/timm networks are built by their library (its own initialisation);
    ``image_size`` (see :func:`model_options`) applies to them only.
    """
    if num_classes < 1 or in_channels < 1:
        raise UserError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    if is_library_name(name):
        if memory_efficient or dropout:
            raise UserError(f"--memory-efficient and --dropout apply to the CIFAR zoo, not {name!r}")
        return build_library_model(name, num_classes, in_channels, image_size)
    if image_size is not None:
        raise UserError(f"image_size applies to torchvision/timm networks, not {name!r}")
    spec = _parse(name)
    if memory_efficient and spec.family != "densenet-bc":
        raise UserError(f"memory_efficient applies to densenet-bc models only, not {spec.name!r}")
    if dropout and spec.family != "wrn":
        raise UserError(f"dropout applies to wrn models only, not {spec.name!r}; leave it at 0")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")

    if spec.family == "densenet-bc":
        return DenseNetBC(
            spec.depth, spec.width, num_classes, in_channels, memory_efficient=memory_efficient
        )
    if spec.family == "wrn":
        return WideResNet(spec.depth, spec.width, num_classes, in_channels, dropout=dropout)
    return ResNet(spec.depth, num_classes, in_channels)
