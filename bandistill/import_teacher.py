"""Bring your own teacher: weights a user already has, as a generation 0 the pipeline accepts.

No training happens. The weights (a torchvision/timm state dict, or a bandistill checkpoint
from another run; see :mod:`bandistill.models.weights`) are fitted to the named network for
the dataset's classes (through a class map when the teacher has more), evaluated on the
dataset's test split, and written as an ordinary checkpoint whose extra fields say where it
came from:

* ``normalization`` is what the *weights* expect, not the dataset's statistics: the mean/std
  of the library's ImageNet weights for this architecture (torchvision's
  ``<Weights>.DEFAULT.transforms()``, timm's ``pretrained_cfg``), a bandistill checkpoint's own,
  or ``--mean/--std``; ``normalization_source`` says which.
* ``eval_transform`` records what the network is shown at evaluation: the dataset's images as
  stored (in-memory data), or each photo's centre crop resized to ``--image-size`` (photos
  streamed from disk), scaled to [0, 1] and normalised. The library's own evaluation recipe
  (resize, centre crop, interpolation) is kept beside it for reference.
* ``imported``: the file, its byte digest, the class map (teacher outputs and the indices
  kept) and the library's recipe source.

The test accuracy is measured here, before anything is dumped, so a wrong class map or
normalisation shows at once (ImageNet weights on a class-mapped Imagenette score far above
chance; the same weights with a wrong map score near it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from bandistill.checkpoint import save_checkpoint
from bandistill.data import ImageDataset, load_dataset
from bandistill.device import resolve_device
from bandistill.errors import UserError
from bandistill.identity import checkpoint_identity
from bandistill.inference import accuracy_and_nll, predict_logits
from bandistill.models import build_model, count_parameters, model_family, model_options, validate_model_name
from bandistill.models.libraries import is_library_name, split_name, weights_recipe
from bandistill.models.weights import (
    fit_state_dict, head_classes, head_name, read_weights, resolve_class_map, select_head,
)

MODEL_FILE = "model.pt"


class FittedWeights:
    """Weights read from a file and fitted to a network for ``dataset``'s classes.

    ``fresh_head``: leave the classifier as built (fine-tuning to other classes) instead of
    mapping the teacher's classes. ``fallback_normalization`` ``(mean, std, source)``: what to
    use for a zoo network's state dict, which names none (else ``--mean/--std`` are required).
    ``training``: for ``train --init-weights`` (a fresh head is then offered). Used by :func:`import_teacher` and ``train --init-weights``.
    """

    def __init__(self, weights: str | Path, dataset: ImageDataset, *, model: str | None = None,
                 class_map: str | None = None, fresh_head: bool = False,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 fallback_normalization: tuple[list[float], list[float], str] | None = None,
                 training: bool = False):
        self.path = Path(weights).expanduser()
        state, source_ckpt = read_weights(self.path)
        self.source_checkpoint = source_ckpt
        if source_ckpt is not None:
            arch = source_ckpt["model"]["name"]
            if model and validate_model_name(model) != arch:
                raise UserError(f"{self.path} is a bandistill checkpoint of {arch}, not {model}; drop --model or "
                                f"pass --model {arch}")
            self.name = arch
            options = dict(source_ckpt["model"].get("options") or {})
            teacher_classes = list(source_ckpt["dataset"].get("classes") or [])
            norm, source = source_ckpt["normalization"], f"the checkpoint's own ({self.path.name}, trained on " \
                f"{source_ckpt['dataset']['name']})"
            self.recipe: dict[str, Any] | None = None
        else:
            if not model:
                raise UserError(f"{self.path} is a plain state dict: name the architecture it was saved from with "
                                "--model (e.g. torchvision/resnet18 or timm/resnet10t)")
            self.name = validate_model_name(model)
            options = model_options(self.name, dataset.image_shape)
            teacher_classes = None
            self.recipe = weights_recipe(self.name) if is_library_name(self.name) else None
            if self.recipe is not None:
                norm = {"mean": self.recipe["mean"], "std": self.recipe["std"]}
                source = f"{self.recipe['source']} (the library's ImageNet weights for {split_name(self.name)[1]})"
            elif fallback_normalization is not None and (mean is None or std is None):
                norm = {"mean": fallback_normalization[0], "std": fallback_normalization[1]}
                source = fallback_normalization[2]
            elif mean is None or std is None:
                raise UserError(f"a {self.name} state dict does not say how its inputs were normalised: pass "
                                "--mean and --std (per channel, images in [0, 1])")
            else:
                norm, source = None, ""
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise UserError("pass --mean and --std together (one value per image channel each)")
            norm, source = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}, "given with --mean/--std"
        channels = dataset.in_channels
        _check_channels(state, channels, self.path)
        if len(norm["mean"]) != channels or len(norm["std"]) != channels or min(norm["std"]) <= 0:
            raise UserError(f"the normalisation ({source}) has {len(norm['mean'])} channels and the dataset's images "
                            f"{channels}; pass --mean and --std with {channels} values each (std > 0)")
        self.options = options
        self.normalization = {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
        self.normalization_source = source
        self.model = build_model(self.name, dataset.num_classes, channels, **options)
        head = head_name(self.model)
        self.teacher_outputs = head_classes(state, head)
        self.class_index: list[int] | None = None
        skip: tuple[str, ...] = ()
        if fresh_head:
            if class_map:
                raise UserError("pass --class-map (keep the teacher's classes) or --fresh-head (a new classifier), "
                                "not both")
            skip = (head,)
        elif self.teacher_outputs is not None:
            try:
                self.class_index = resolve_class_map(class_map, list(dataset.classes), self.teacher_outputs,
                                                     teacher_classes)
            except UserError as exc:
                if not training or class_map:  # a teacher keeps its classes; a run to train may start fresh
                    raise
                raise UserError(f"{exc}; or --fresh-head for a new classifier") from None
            if self.class_index is not None:
                state = select_head(state, head, self.class_index)
        self.class_map_spec = class_map or ("by class name" if self.class_index is not None else None)
        self.fresh = fit_state_dict(self.model, state, self.name, skip=skip)
        self.model.eval()

    def record(self) -> dict[str, Any]:
        """Where the weights came from (the checkpoint's ``imported`` / ``init_weights`` field)."""
        from bandistill.identity import file_digest

        out: dict[str, Any] = {
            "weights": str(self.path.resolve()),
            "weights_digest": file_digest(self.path),
            "format": "bandistill checkpoint" if self.source_checkpoint is not None else
            ("safetensors" if self.path.suffix == ".safetensors" else "torch state dict"),
            "architecture": self.name,
            "library": model_family(self.name),
            "teacher_outputs": self.teacher_outputs,
            "class_map": None if self.class_index is None else
            {"spec": self.class_map_spec, "indices": list(self.class_index)},
            "fresh_head": list(self.fresh),
        }
        if self.source_checkpoint is not None:
            out["source_checkpoint_digest"] = checkpoint_identity(self.source_checkpoint)
            out["source_dataset"] = self.source_checkpoint["dataset"]["name"]
        if self.recipe is not None:
            out["library_recipe"] = self.recipe
        return out


def _check_channels(state: dict[str, torch.Tensor], channels: int, path: Path) -> None:
    """One line for weights made for another number of image channels (RGB weights, grayscale data)."""
    from bandistill.transfer import teacher_ends

    first = teacher_ends(state)[0]
    weight = state.get(f"{first}.weight") if first else None
    if weight is not None and weight.shape[1] != channels:
        raise UserError(f"{path} takes {weight.shape[1]}-channel images but the dataset's have {channels}; "
                        "give it images with as many channels (e.g. the RGB version of the data)")


def teacher_architecture(weights: str | Path) -> str:
    """The architecture a bandistill checkpoint names; :class:`UserError` for a plain state dict (it names none)."""
    _, ckpt = read_weights(weights)
    if ckpt is None:
        raise UserError(f"--teacher {weights} is a plain state dict: name the architecture it was saved from with "
                        "--model (e.g. torchvision/resnet18 or timm/resnet10t)")
    return ckpt["model"]["name"]


def eval_transform(dataset: ImageDataset, weights: FittedWeights) -> dict[str, Any]:
    """What the network is shown at evaluation (and, with a view's crop and flip, at dump time)."""
    size = dataset.image_shape[-1]
    if dataset.view_policy.name == "pad-crop-flip":
        steps, resize = "the dataset's uint8 image as stored (no resize, no crop) -> / 255 -> (x - mean) / std", None
    else:  # photos streamed from disk (--image-size): the usual resize-then-centre-crop, as one box
        steps = (f"each photo's central square of 0.875 x its shorter side, resized to {size}x{size} (Pillow, "
                 "antialiased bilinear, uint8) -> / 255 -> (x - mean) / std")
        resize = size
    return {
        "input": list(dataset.image_shape),
        "resize": resize,
        "view_policy": dataset.view_policy.name,
        "steps": steps,
        "library_recipe": None if weights.recipe is None else {
            k: weights.recipe[k] for k in ("resize_size", "crop_size", "interpolation")},
    }


def import_teacher(
    weights: str | Path,
    dataset: str,
    out: str | Path,
    *,
    model: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    class_map: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    device: str = "auto",
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
    rewrite: bool = False,
) -> dict[str, Any]:
    """Write ``out/model.pt``: the weights as a generation 0 for ``dataset``, with its test accuracy.

    Raises :class:`UserError` (nothing written) for weights that do not fit ``model``, a class
    that cannot be mapped, or an ``out`` that already holds a run (``rewrite``: ``ban`` resuming
    its own interrupted import, which writes the same content again).
    """
    log = log or (lambda msg: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if (out / MODEL_FILE).exists() and not rewrite:
        raise UserError(f"--out {out} already holds {MODEL_FILE}; choose another --out")
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    ds = load_dataset(dataset, data_dir, image_size=image_size)
    fitted = FittedWeights(weights, ds, model=model, class_map=class_map, mean=mean, std=std)
    dev = resolve_device(device)
    net = fitted.model.to(dev, memory_format=torch.channels_last)
    norm = fitted.normalization
    logits = predict_logits(net, ds.test_images, torch.tensor(norm["mean"]), torch.tensor(norm["std"]),
                            device=dev, batch_size=batch_size)
    if not bool(torch.isfinite(logits).all()):
        raise UserError(f"the teacher's logits on the test split are not finite (NaN or inf): {fitted.path} is "
                        "broken or does not belong to this architecture")
    acc, nll = accuracy_and_nll(logits, ds.test_labels)
    chance = 1.0 / max(1, ds.num_classes)
    log(f"teacher test accuracy on {ds.name}: {acc:.4f} (chance {chance:.4f}), normalisation: "
        f"{fitted.normalization_source}")
    ckpt = {
        "model": {"name": fitted.name, "num_classes": ds.num_classes, "in_channels": ds.in_channels,
                  "options": fitted.options},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "dataset": {
            "name": ds.name,
            "fingerprint": ds.fingerprint,
            "num_classes": ds.num_classes,
            "classes": list(ds.classes),
            "image_shape": list(ds.image_shape),
            "view_policy": ds.view_policy.to_json(),
        },
        "normalization": norm,
        "normalization_source": fitted.normalization_source,
        "eval_transform": eval_transform(ds, fitted),
        "imported": fitted.record(),
        "config": {"model": fitted.name, "dataset": ds.name, "data_dir": data_dir, "val_split": 0.0,
                   **({"image_size": int(image_size)} if image_size else {})},
        "generation": 0,
        "teacher": None,
        "epoch": 0,
        "transferred": [],
        "history": [],
        "metrics": {"test_accuracy": acc, "test_loss": nll},
    }
    if not math.isfinite(nll):
        raise UserError(f"the teacher's test loss is not finite; check {fitted.path} and its normalisation")
    save_checkpoint(ckpt, out / MODEL_FILE)
    return {
        "checkpoint": str(out / MODEL_FILE),
        "model": fitted.name,
        "dataset": ds.name,
        "classes": ds.num_classes,
        "teacher_outputs": fitted.teacher_outputs,
        "class_map": ckpt["imported"]["class_map"],
        "normalization": norm,
        "normalization_source": fitted.normalization_source,
        "eval_transform": ckpt["eval_transform"]["steps"],
        "test_accuracy": acc,
        "test_loss": nll,
        "chance_accuracy": chance,
        "parameters": count_parameters(net),
        "checkpoint_digest": checkpoint_identity(ckpt),
        "device": str(dev),
    }
