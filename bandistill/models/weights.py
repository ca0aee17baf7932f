"""Weights a user already has: reading them, mapping their classes, fitting them to a network.

A weights file is a torchvision/timm state dict (``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``, or ``.safetensors``), possibly wrapped the way training
scripts save them (``{"state_dict": ...}``, ``{"model": ...}``, DDP's ``module.`` prefix), or
a bandistill checkpoint from another run. Nothing is unpickled beyond tensors and plain
values, and nothing is fetched from a hub.

A teacher trained on more classes than the dataset has (an ImageNet-1k network on a
10-class ImageFolder) keeps only the rows of its classifier that the **class map** names,
in the dataset's class order: the network then outputs exactly the selected logits of
the full head (a linear layer's row ``i`` computes output ``i`` alone), and every stage
downstream sees an ordinary network for the dataset's classes. The map comes from a file,
from the teacher's own class names (a bandistill checkpoint), or from WordNet ids: the
dataset's class folders named ``n01440764``-style are looked up in ImageNet-1k's class order
(the sorted synsets, shipped in ``imagenet1k_wnids.txt``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bandistill.errors import UserError

WNID = "wnid"
_WNID_RE = re.compile(r"n\d{8}")
#: Keys under which training scripts nest the state dict, in the order they are tried.
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema", "module", "net")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, bandistill_checkpoint_or_None)`` of a weights file; :class:`UserError` when unreadable."""
    from bandistill.checkpoint import FORMAT, checked_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass a .pth, .safetensors or bandistill model.pt")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            return _flat(dict(load_file(str(path))), path), None
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise UserError(f"{path} is not a readable .safetensors file ({type(exc).__name__}); "
                            "pass another file") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module, a truncated zip, not torch at all
        raise UserError(f"{path} is not a state dict torch can read safely ({type(exc).__name__}); save the "
                        "weights with torch.save(model.state_dict(), path) or as .safetensors") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = checked_checkpoint(obj, path)  # read once: the checks of load_checkpoint, on what torch.load gave
        return dict(ckpt["state_dict"]), ckpt
    return _flat(_unwrap(obj, path), path), None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise UserError(f"{path} holds no state dict (a dict of tensors, or one under 'state_dict' or 'model'); "
                    "save the weights with torch.save(model.state_dict(), path)")


def _flat(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DDP (and ``_orig_mod.`` that torch.compile) adds to every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if not state:
        raise UserError(f"{path} holds an empty state dict")
    return state


def head_name(model: nn.Module) -> str:
    """The module name of a network's classifier (the layer with one output per class)."""
    from bandistill.transfer import student_ends

    return student_ends(model)[1]


def head_classes(state: dict[str, torch.Tensor], head: str) -> int | None:
    """How many classes the weights' classifier ``head`` has (None when the file has no such layer)."""
    weight = state.get(f"{head}.weight")
    return None if weight is None else int(weight.shape[0])


# -- class maps ---------------------------------------------------------------------------------
def imagenet1k_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids in its class order (sorted; the order torchvision and timm heads use)."""
    return (Path(__file__).with_name("imagenet1k_wnids.txt")).read_text().split()


def resolve_class_map(spec: str | None, classes: list[str], teacher_outputs: int,
                      teacher_classes: list[str] | None = None) -> list[int] | None:
    """The teacher output index of each dataset class, in the dataset's order; None for the identity.

    ``spec``: None (the identity when the counts agree, else the teacher's class names when it
    has them), ``"wnid"`` (dataset folders named by WordNet id, a 1000-way ImageNet head), or a
    file: JSON ``{"dataset class": teacher index or teacher class name}`` or lines
    ``<dataset class> <teacher index>``. A class that cannot be mapped is a :class:`UserError`.
    """
    n = len(classes)
    if spec is None:
        if teacher_classes is not None and list(teacher_classes) != list(classes):
            return _by_name(classes, teacher_classes, "the teacher's classes")
        if teacher_outputs == n:
            return None
        raise UserError(f"the teacher has {teacher_outputs} outputs but the dataset {n} classes: pass --class-map "
                        "FILE (dataset class -> teacher output), or --class-map wnid when the class folders are "
                        "ImageNet WordNet ids")
    if spec == WNID:
        if teacher_outputs != 1000:
            raise UserError(f"--class-map wnid maps onto ImageNet-1k's 1000 classes, but the teacher has "
                            f"{teacher_outputs} outputs; pass a --class-map FILE")
        bad = [c for c in classes if not _WNID_RE.fullmatch(c)]
        if bad:
            raise UserError(f"--class-map wnid: class folder {bad[0]!r} is not a WordNet id (n01440764-style)"
                            f"{f' ({len(bad)} such)' if len(bad) > 1 else ''}; pass a --class-map FILE")
        return _by_name(classes, imagenet1k_wnids(), "ImageNet-1k's classes")
    return _from_file(Path(spec).expanduser(), classes, teacher_outputs, teacher_classes)


def _by_name(classes: list[str], teacher_classes: list[str], where: str) -> list[int]:
    index = {c: i for i, c in enumerate(teacher_classes)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise UserError(f"class {missing[0]!r} of the dataset is not among {where}"
                        f"{f' ({len(missing)} such)' if len(missing) > 1 else ''}; pass a --class-map FILE "
                        "that maps it, or drop the class folder")
    return [index[c] for c in classes]


def _from_file(path: Path, classes: list[str], outputs: int, teacher_classes: list[str] | None) -> list[int]:
    if not path.is_file():
        raise UserError(f"--class-map {path} does not exist; pass a JSON file {{\"class\": index}} or 'wnid'")
    text = path.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = {}
        for number, line in enumerate(text.splitlines(), 1):
            parts = line.replace(",", " ").split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise UserError(f"--class-map {path} line {number} is not '<dataset class> <teacher index>'")
            raw[parts[0]] = parts[1]
    if not isinstance(raw, dict):
        raise UserError(f"--class-map {path} is not a JSON object {{\"dataset class\": teacher index}}")
    names = {c: i for i, c in enumerate(teacher_classes or [])}
    mapping = []
    for c in classes:
        if c not in raw:
            raise UserError(f"--class-map {path} does not map the dataset's class {c!r}; add it")
        value = raw[c]
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, str):
            if value not in names:
                raise UserError(f"--class-map {path} maps {c!r} to {value!r}, which is not a teacher class name; "
                                "give the teacher's output index")
            value = names[value]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < outputs:
            raise UserError(f"--class-map {path} maps {c!r} to {value!r}, not an output of the teacher "
                            f"(0..{outputs - 1})")
        mapping.append(value)
    seen: dict[int, str] = {}
    for c, i in zip(classes, mapping):
        if i in seen:
            raise UserError(f"--class-map {path} maps both {seen[i]!r} and {c!r} to teacher output {i}; "
                            "each class needs its own output")
        seen[i] = c
    return mapping


# -- fitting weights to a network ---------------------------------------------------------------
def select_head(state: dict[str, torch.Tensor], head: str, class_index: list[int]) -> dict[str, torch.Tensor]:
    """The state dict with the classifier's rows (weight and bias) reduced to ``class_index``, in order."""
    out = dict(state)
    index = torch.tensor(class_index, dtype=torch.long)
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in out:
            out[key] = out[key].index_select(0, index).contiguous()
    return out


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str, *,
                   skip: tuple[str, ...] = ()) -> list[str]:
    """Load ``state`` into ``model`` exactly (every key, every shape), or say in one line what does not fit.

    ``skip``: module-name prefixes left as the model built them (a fresh head). Returns the keys
    left out that way.
    """
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith(tuple(f"{s}." for s in skip))}
    left = sorted(k for k in own if k.startswith(tuple(f"{s}." for s in skip)))
    missing = [k for k in own if k not in kept and k not in left]
    unexpected = [k for k in kept if k not in own]
    shapes = [f"{k} {tuple(kept[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in kept and kept[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_few(shapes)}")
    if problems:
        raise UserError(f"the weights do not fit {name}: {'; '.join(problems)}; pass --model with the "
                        "architecture they were saved from")
    model.load_state_dict({**{k: own[k] for k in left}, **kept}, strict=True)
    return left


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:3])
    return f"{shown} (+{len(items) - 3} more)" if len(items) > 3 else shown
