"""Networks from torchvision and timm by name: ``torchvision/resnet50``, ``timm/efficientnet_b0``.

The CIFAR zoo (:mod:`bandistill.models`) is our own code; everything at ImageNet resolution
comes from the libraries made for it. A name is ``<library>/<builder>``:

* ``torchvision/<name>``: any classification builder of ``torchvision.models``
  (``torchvision.models.list_models(module=torchvision.models)``), built with
  ``weights=None`` -- torchvision's own initialisation, nothing downloaded.
* ``timm/<name>``: any architecture of ``timm.list_models()`` (timm is an optional extra:
  ``pip install 'bandistill[timm]'``), built with ``pretrained=False``.

Both are built for the dataset's class count and input channels. torchvision has no
channel option, so for ``in_channels != 3`` the first convolution is replaced by one of the
same shape that takes ``in_channels`` (timm does the same itself with ``in_chans``).
Networks whose input size is fixed at construction (ViT, MaxViT) are built for the
dataset's image size (``image_size`` option, recorded in the checkpoint's model spec).
Pretrained weights come only from a file the user gives (:mod:`bandistill.models.weights`);
nothing here fetches from a hub.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from functools import lru_cache

import torch
from torch import nn

from bandistill.errors import UserError

LIBRARIES = ("torchvision", "timm")
TIMM_INSTALL = "pip install 'bandistill[timm]' (or pip install timm)"
#: torchvision builders whose input size is fixed when they are built, and the keyword that sets it.
_TORCHVISION_SIZE_KWARG = {"vit_": "image_size", "maxvit_": "input_size"}
#: torchvision builders with auxiliary heads that would change what forward returns in training.
_NO_AUX = ("googlenet", "inception_v3")


def is_library_name(name: str) -> bool:
    """Whether ``name`` names a torchvision or timm network (``<library>/<builder>``)."""
    return isinstance(name, str) and name.strip().split("/", 1)[0].lower() in LIBRARIES and "/" in name


def split_name(name: str) -> tuple[str, str]:
    """``("torchvision", "resnet50")`` from ``"torchvision/resnet50"`` (library lower-cased)."""
    library, _, arch = name.strip().partition("/")
    return library.lower(), arch.strip()


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError(f"timm is not installed, so timm/ models cannot be built; install it: {TIMM_INSTALL}") from None
    return timm


@lru_cache(maxsize=None)
def library_models(library: str) -> tuple[str, ...]:
    """Every classification builder a library offers (bare names, sorted); empty for timm when absent."""
    if library == "torchvision":
        import torchvision

        return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))
    if library == "timm":
        if not timm_available():
            return ()
        return tuple(sorted(_timm().list_models()))
    return ()


def validate_library_name(name: str) -> str:
    """The canonical ``library/builder`` name, or :class:`UserError` suggesting close names."""
    library, arch = split_name(name)
    if library == "timm":
        _timm()
    names = library_models(library)
    if arch in names:
        return f"{library}/{arch}"
    lowered = {n.lower(): n for n in names}
    key = arch.lower().replace("-", "_")
    if key in lowered:
        return f"{library}/{lowered[key]}"
    close = difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)
    other = "timm" if library == "torchvision" else "torchvision"
    if key in {n.lower() for n in library_models(other)}:  # the other library's name ("torchvision/resnet10t")
        raise UserError(f"unknown model {name!r}: {library} has no {arch!r}, {other} has: use {other}/{arch}")
    hint = f"; did you mean {', '.join(f'{library}/{lowered[c]}' for c in close)}?" if close else \
        f"; list them with: bandistill models '{library}/*'"
    raise UserError(f"unknown model {name!r}: {library} has no classification model {arch!r}{hint}")


def list_library_models(pattern: str | None = None) -> list[str]:
    """``library/builder`` names matching a glob or substring ``pattern`` (all of them without one)."""
    names = [f"{lib}/{arch}" for lib in LIBRARIES for arch in library_models(lib)]
    return [n for n in names if matches(n, pattern)]


def matches(name: str, pattern: str | None) -> bool:
    """Glob (``timm/resnet*``) or, without wildcards, substring match, case-insensitive."""
    if not pattern:
        return True
    name, pattern = name.lower(), pattern.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def needs_image_size(name: str) -> bool:
    """Whether the network's input size is fixed when it is built (it then gets ``image_size``)."""
    library, arch = split_name(name)
    if library == "torchvision":
        return any(arch.startswith(prefix) for prefix in _TORCHVISION_SIZE_KWARG)
    cfg = _timm_cfg(arch)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _timm_cfg(arch: str):
    """timm's default pretrained config of an architecture (metadata only; nothing is downloaded)."""
    timm = _timm()
    try:
        return timm.models.get_pretrained_cfg(arch)
    except Exception:  # architectures without a config
        return None


def build_library_model(name: str, num_classes: int, in_channels: int = 3,
                        image_size: list[int] | tuple[int, int] | None = None) -> nn.Module:
    """A freshly initialised torchvision/timm network for ``num_classes`` and ``in_channels``."""
    library, arch = split_name(validate_library_name(name))
    size = None if image_size is None else tuple(int(s) for s in image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes about future default initialisations
        if library == "timm":
            kwargs = {"img_size": size} if size is not None and needs_image_size(name) else {}
            try:
                return _timm().create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                            **kwargs)
            except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
                raise UserError(f"timm could not build {arch} for {num_classes} classes and {in_channels} "
                                f"channels ({type(exc).__name__}: {str(exc)[:160]}); pick another model") from None
        import torchvision

        kwargs = {}
        for prefix, key in _TORCHVISION_SIZE_KWARG.items():
            if arch.startswith(prefix) and size is not None:
                kwargs[key] = size[0] if key == "image_size" else size
        if size is not None and "image_size" in kwargs and size[0] != size[1]:
            raise UserError(f"torchvision/{arch} takes square images only, not {size[0]}x{size[1]}")
        if arch in _NO_AUX:
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        try:
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise UserError(f"torchvision could not build {arch} for {num_classes} classes "
                            f"({type(exc).__name__}: {str(exc)[:160]}); pick another model") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels, arch)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, arch: str) -> None:
    """Give a torchvision network a first convolution that takes ``in_channels`` (same shape otherwise)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3 and child.groups == 1:
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, bias=child.bias is not None, padding_mode=child.padding_mode)
                setattr(parent, child_name, conv)
                return
    raise UserError(f"torchvision/{arch} has no 3-channel first convolution to adapt to {in_channels}-channel "
                    "images; pick another model or convert the images to RGB")


def weights_recipe(name: str) -> dict:
    """What the library says its ImageNet weights for this architecture expect (metadata only).

    ``mean``/``std`` (images in [0, 1]), the evaluation resize/crop and interpolation, and
    ``source``: where the figures come from. torchvision: ``<Weights>.DEFAULT.transforms()``;
    timm: the architecture's default ``pretrained_cfg``. Neither call downloads anything.
    """
    library, arch = split_name(validate_library_name(name))
    if library == "timm":
        cfg = _timm_cfg(arch)
        if cfg is None:
            return _imagenet_default(f"timm has no pretrained_cfg for {arch}: ImageNet's mean/std assumed")
        crop = int(cfg.input_size[-1])
        return {
            "mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std],
            "resize_size": int(round(crop / float(cfg.crop_pct or 1.0))), "crop_size": crop,
            "interpolation": str(cfg.interpolation), "num_classes": int(cfg.num_classes or 0),
            "source": f"timm pretrained_cfg of {arch}" + (f".{cfg.tag}" if cfg.tag else ""),
        }
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return _imagenet_default(f"torchvision lists no weights for {arch}: ImageNet's mean/std assumed")
    t = weights.transforms()
    return {
        "mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std],
        "resize_size": int(t.resize_size[0]) if t.resize_size else None, "crop_size": int(t.crop_size[0]),
        "interpolation": str(t.interpolation.value), "num_classes": len(weights.meta.get("categories") or []),
        "source": f"torchvision {type(weights).__name__}.{weights.name}.transforms()",
    }


#: ImageNet's per-channel mean and std (images in [0, 1]), as torchvision and timm use them.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _imagenet_default(source: str) -> dict:
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize_size": 256, "crop_size": 224,
            "interpolation": "bilinear", "num_classes": 1000, "source": source}


def meta_parameter_count(name: str, num_classes: int, in_channels: int = 3,
                         image_size: tuple[int, int] | None = None) -> int | None:
    """Trainable parameters, counted on the meta device (no memory); None when it cannot be built there."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_library_model(name, num_classes, in_channels,
                                        image_size if needs_image_size(name) else None)
    except (NotImplementedError, RuntimeError, UserError):
        return None
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
