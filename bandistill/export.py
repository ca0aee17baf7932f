"""ONNX export of a generation: a self-describing model, checked in onnxruntime before it is kept.

The exported graph takes the **raw image**: input ``image``, ``uint8``, shape
``(batch, C, H, W)`` (NCHW, pixel values 0-255, the channel order the model was trained
on; ``batch`` is dynamic). The dataset's normalisation ``(image / 255 - mean) / std`` is
the first thing the graph does, so a deployment cannot forget it or apply the wrong one; a
float image in [0, 1] is refused by onnxruntime's type check instead of silently giving
garbage. The output ``logits`` is ``float32 (batch, classes)``.

Everything else a user would need to remember is stored in the model's ``metadata_props``
under ``bandistill.*`` keys (see :data:`METADATA_KEYS`): architecture, class count and
names, dataset name and fingerprint, generation, the input contract, mean/std, the
checkpoint's digest, the accuracy ``train`` reported. ``onnx.checker`` must pass.

After writing (beside the final name), the file is run in onnxruntime on real test images
and compared with the PyTorch model exactly as ``train`` evaluated it
(:func:`bandistill.inference.predict_logits`). Above tolerance it is a
:class:`VerificationError` and nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from bandistill import __version__
from bandistill.checkpoint import (
    atomic_write, checkpoint_dataset, file_digest, load_checkpoint, model_from_checkpoint, normalization,
)
from bandistill.errors import UserError, VerificationError

FORMAT = "bandistill-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
PREFIX = "bandistill."

#: The ``metadata_props`` keys every exported generation carries (without the prefix).
METADATA_KEYS = (
    "format", "format_version", "kind", "model", "num_classes", "classes", "dataset",
    "dataset_fingerprint", "generation", "input", "input_shape", "input_dtype", "output",
    "mean", "std", "normalization", "val_split", "view_policy", "checkpoint", "checkpoint_digest",
    "test_accuracy", "teacher", "exporter", "version",
)

#: The torch.export-based exporter writes opset 18 or newer; older opsets use the TorchScript one.
DYNAMO_MIN_OPSET = 18
#: Default parity tolerance: max |logit difference| <= tolerance * max(1, max |logit|).
DEFAULT_TOLERANCE = 1e-3
#: How many test images the parity check runs (all of them when the split is smaller).
PARITY_SAMPLES = 256
EXPORTERS = ("auto", "dynamo", "torchscript")
#: The biggest single-file ONNX model protobuf allows.
MAX_PROTO_BYTES = 2**31 - 1


class NormalizedModel(nn.Module):
    """``uint8 (B, C, H, W)`` image -> logits, with the dataset normalisation inside.

    The arithmetic is the same sequence of float32 ops as
    :func:`bandistill.views.normalize`, so ONNX and PyTorch agree to rounding.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) / 255.0
        return self.net((x - self.mean) / self.std)


def check_replaceable(out: Path, option: str) -> None:
    """Refuse to write an ONNX model over an existing file that is not one (a checkpoint, a cache...).

    Re-exporting over an earlier ``.onnx`` is normal; replacing a ``model.pt`` or an ``.h5``
    cache because of a swapped argument would lose the user's work.
    """
    if not out.is_file() or out.stat().st_size == 0:
        return
    import zipfile

    with open(out, "rb") as f:
        head = f.read(8)
    what = None
    if zipfile.is_zipfile(out):
        what = "a PyTorch checkpoint"
    elif head.startswith(b"\x89HDF"):
        what = "an HDF5 file"
    else:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            proto = onnx.load(str(out), load_external_data=False)
            if proto.ir_version == 0 or not proto.graph.node:
                what = "not an ONNX model"
        except (DecodeError, ValueError, OSError, RuntimeError):
            what = "not an ONNX model"
    if what is not None:
        what = what if what.startswith("not") else f"{what}, not an ONNX model"
        raise UserError(f"{option} {out} already exists and is {what}; it was left as it is: "
                        "choose another file name for the .onnx")


# -- reading bandistill metadata back ------------------------------------------------------------
def read_metadata(model) -> dict[str, str]:
    """The ``bandistill.*`` metadata of an ``onnx.ModelProto``, without the prefix."""
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def set_metadata(model, values: dict[str, Any]) -> None:
    """Write ``values`` as ``bandistill.*`` metadata (JSON for non-strings), replacing old keys."""
    keep = [p for p in model.metadata_props if not (p.key.startswith(PREFIX) and p.key[len(PREFIX):] in values)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def input_description(shape: Sequence[int]) -> str:
    c, h, w = shape
    return (
        f"{INPUT_NAME}: uint8 tensor (batch, {c}, {h}, {w}), NCHW, raw pixel values 0-255 in the channel order "
        "used for training; batch is dynamic. Do not normalise: (image/255 - mean)/std is inside the graph."
    )


# -- the export itself ------------------------------------------------------------------------------
def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (its ``model.pt``)."""
    from bandistill.train import MODEL_FILE

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        raise UserError(f"{p} is a folder without {MODEL_FILE}; pass a finished run folder or its {MODEL_FILE}")
    return p


def _max_opset() -> int:
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: int | None) -> None:
    """Raise :class:`UserError` for an opset this onnx cannot write (``None``: the exporter's default)."""
    if opset is not None and not 7 <= opset <= _max_opset():
        raise UserError(f"--opset {opset} is out of range: use 7..{_max_opset()} (or leave it out for the exporter's default)")


def _choose_exporter(exporter: str, opset: int | None) -> str:
    exporter = (exporter or "auto").lower()
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter '{exporter}': use auto, dynamo or torchscript")
    check_opset(opset)
    if exporter == "auto":
        return "torchscript" if opset is not None and opset < DYNAMO_MIN_OPSET else "dynamo"
    if exporter == "dynamo" and opset is not None and opset < DYNAMO_MIN_OPSET:
        raise UserError(
            f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer, not {opset}; "
            "use --exporter torchscript (or auto) for older opsets"
        )
    return exporter


def _export_proto(module: nn.Module, sample: torch.Tensor, opset: int | None, exporter: str):
    """Export ``module`` (one uint8 input) to an ``onnx.ModelProto`` with a dynamic batch axis."""
    import onnx

    module.eval()
    # The exporters print progress and warnings (to stdout, which --json keeps clean).
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                module,
                (sample,),
                None,
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"image": {0: torch.export.Dim(BATCH_DIM, min=1)}},
                external_data=False,
            )
            proto = program.model_proto
        else:
            import io

            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (sample,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
                do_constant_folding=True,
            )
            proto = onnx.load_from_string(buffer.getvalue())
    for value in (*proto.graph.input, *proto.graph.output):  # name the batch axis the same everywhere
        dim = value.type.tensor_type.shape.dim[0]
        dim.dim_param = BATCH_DIM
    return proto


def _parity_images(ckpt: dict[str, Any], dataset, data_dir, samples: int) -> torch.Tensor:
    """Real test images of the checkpoint's dataset for the parity check."""
    from bandistill.data import ImageDataset

    info = ckpt["dataset"]
    if not isinstance(dataset, ImageDataset):
        name = dataset or info["name"]
        where = data_dir if data_dir is not None else (ckpt.get("config") or {}).get("data_dir")
        try:
            dataset = checkpoint_dataset(ckpt, name, where)
        except UserError as exc:
            raise UserError(f"the export is checked on real {name} test images, which failed to load: {exc}") from None
    shape = tuple(int(s) for s in info.get("image_shape") or dataset.image_shape)
    if dataset.image_shape != shape:
        raise UserError(
            f"dataset {dataset.name} has {dataset.image_shape} images but the checkpoint was trained on {shape}; "
            "pass the dataset it was trained on"
        )
    images = dataset.test_images
    if images.shape[0] == 0:
        images = dataset.train_images
    return images[:samples]


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    dataset=None,
    exporter: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    parity_samples: int = PARITY_SAMPLES,
) -> dict[str, Any]:
    """Export one checkpoint (or run folder) to ``out_path`` and check it in onnxruntime.

    ``dataset`` is an already loaded :class:`~bandistill.data.ImageDataset` (or a name) for
    the parity images; by default the checkpoint's own dataset is loaded from ``data_dir``
    (default: the run's). Returns a summary with the parity figures. Raises
    :class:`UserError` for bad input and :class:`VerificationError` when onnxruntime and
    PyTorch disagree beyond ``tolerance * max(1, max|logit|)``; then nothing is written
    to ``out_path``.
    """
    import onnx

    from bandistill.inference import predict_logits
    from bandistill.onnx_runtime import create_session, run_batched

    t0 = time.perf_counter()
    ckpt_path = resolve_checkpoint_path(checkpoint_path)
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the .onnx file to write (e.g. {out / 'gen0.onnx'})")
    check_replaceable(out, "--out")
    if not tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {tolerance}")
    if parity_samples < 2:
        raise UserError(f"parity_samples must be >= 2, got {parity_samples}")
    chosen = _choose_exporter(exporter, opset)
    ckpt = load_checkpoint(ckpt_path)
    missing = [k for k in ("model", "state_dict", "dataset", "normalization") if k not in ckpt]
    if missing:
        raise UserError(f"{ckpt_path} lacks {', '.join(missing)}; pass a model.pt written by 'bandistill train'")
    net = model_from_checkpoint(ckpt).float()
    mean, std = normalization(ckpt)
    module = NormalizedModel(net, mean, std).eval()
    images = _parity_images(ckpt, dataset, data_dir, parity_samples)
    if images.shape[0] < 2:
        raise UserError(f"the parity check needs at least 2 images of {ckpt['dataset']['name']}, found {images.shape[0]}")
    reference = predict_logits(net, images, mean, std).numpy()

    info = ckpt["dataset"]
    shape = [int(s) for s in info.get("image_shape") or images.shape[1:]]
    metrics = ckpt.get("metrics") or {}
    config = ckpt.get("config") or {}
    exporter_label = f"torch.onnx {chosen} (torch {torch.__version__})"
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": "member",
        "model": ckpt["model"]["name"],
        "num_classes": str(int(ckpt["model"]["num_classes"])),
        "classes": list(info.get("classes") or []),
        "dataset": info["name"],
        "dataset_fingerprint": info["fingerprint"],
        "generation": str(int(ckpt.get("generation", 0))),
        "input": input_description(shape),
        "input_shape": shape,
        "input_dtype": "uint8",
        "output": "logits",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "normalization": "inside the graph: (image / 255 - mean) / std, per channel",
        "val_split": float(config.get("val_split") or 0.0),
        "view_policy": info.get("view_policy", ""),
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_digest": file_digest(ckpt_path),
        "test_accuracy": metrics.get("test_accuracy"),
        "teacher": ckpt.get("teacher"),
        "exporter": exporter_label,
        "version": __version__,
    }
    result: dict[str, Any] = {}

    def write(tmp: str) -> None:
        try:
            proto = _export_proto(module, images[:2].clone(), opset, chosen)
        except UserError:
            raise
        except Exception as exc:
            other = "torchscript" if chosen == "dynamo" else "dynamo"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VerificationError(
                f"{chosen} export of {ckpt_path} failed ({type(exc).__name__}: {first[:200]}); "
                f"try --exporter {other}; nothing written to {out}"
            ) from exc
        set_metadata(proto, metadata)
        proto.producer_name = "bandistill"
        proto.producer_version = __version__
        proto.doc_string = (
            f"bandistill generation {metadata['generation']}: {metadata['model']} on {metadata['dataset']} "
            f"({metadata['num_classes']} classes). {metadata['input']} Output logits: float32 (batch, classes)."
        )
        proto.graph.name = f"bandistill_gen{metadata['generation']}_{metadata['model']}".replace("-", "_")
        if proto.ByteSize() > MAX_PROTO_BYTES:
            raise UserError(f"{ckpt_path} is too large for a single-file ONNX model (over 2 GB)")
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise VerificationError(f"onnx.checker rejects the export of {ckpt_path}: {str(exc).splitlines()[0]}") from exc
        onnx.save(proto, tmp)
        session = create_session(tmp, "cpu")
        try:
            got = run_batched(session, images, batch_size=images.shape[0])
            one = run_batched(session, images[:1], batch_size=1)  # a different batch size: the axis is dynamic
        except Exception as exc:
            raise VerificationError(f"onnxruntime failed to run the export of {ckpt_path}: {exc}; nothing written to {out}") from exc
        diff = float(np.max(np.abs(np.concatenate([got, one]) - np.concatenate([reference, reference[:1]]))))
        limit = float(tolerance * max(1.0, float(np.abs(reference).max())))
        agree = float((got.argmax(1) == reference.argmax(1)).mean())
        result["parity"] = {
            "samples": int(images.shape[0]),
            "batch_sizes": [int(images.shape[0]), 1],
            "max_abs_logit_diff": diff,
            "tolerance": limit,
            "argmax_agreement": agree,
            "provider": "cpu",
        }
        if not np.isfinite(diff) or diff > limit:
            what = "kept its old contents" if out.exists() else "not written"
            raise VerificationError(
                f"onnxruntime logits of {out.name} differ from PyTorch by {diff:.3g} (> tolerance {limit:.3g}) "
                f"on {images.shape[0]} test images; {out} {what}"
            )
        result["opset"] = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)

    atomic_write(out, write)
    return {
        "checkpoint": str(ckpt_path),
        "out": str(out),
        "model": metadata["model"],
        "generation": int(metadata["generation"]),
        "dataset": metadata["dataset"],
        "dataset_fingerprint": metadata["dataset_fingerprint"],
        "num_classes": int(metadata["num_classes"]),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [BATCH_DIM, *shape]},
        "opset": result["opset"],
        "exporter": exporter_label,
        "parity": result["parity"],
        "test_accuracy": metadata["test_accuracy"],
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }


# -- several at once -------------------------------------------------------------------------------
def _is_run_folder(path: Path) -> bool:
    from bandistill.train import MODEL_FILE

    return path.is_dir() and (path / MODEL_FILE).is_file()


def expand_checkpoints(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files from files, run folders and folders of runs (each run's ``model.pt``)."""
    from bandistill.train import MODEL_FILE

    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise UserError(f"checkpoint {p} does not exist; pass a model.pt, a run folder or a folder of runs")
        if p.is_file():
            found.append(p)
        elif _is_run_folder(p):
            found.append(p / MODEL_FILE)
        else:
            runs = sorted(c / MODEL_FILE for c in p.iterdir() if _is_run_folder(c))
            if not runs:
                raise UserError(f"{p} holds no run folder with a {MODEL_FILE}; pass a model.pt or a folder of runs")
            found.extend(runs)
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def _run_name(ckpt: Path) -> str:
    """``runs/gen1/model.pt`` -> ``gen1``; ``foo.pt`` -> ``foo``."""
    from bandistill.train import LAST_FILE, MODEL_FILE

    return ckpt.parent.name if ckpt.name in (MODEL_FILE, LAST_FILE) and ckpt.parent.name else ckpt.stem


def plan_exports(checkpoints: Sequence[str | os.PathLike], outs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Pair checkpoints with output files.

    * as many ``outs`` as checkpoints: pairs, in order;
    * one ``out`` ending in ``.onnx`` and one checkpoint: that file;
    * one ``out`` that is a folder (not ending in ``.onnx``): ``<out>/<run name>.onnx`` for
      every checkpoint, the run name being the checkpoint's folder (``runs/gen1`` -> ``gen1.onnx``).
    """
    if not checkpoints:
        raise UserError("no checkpoint given: pass --checkpoint runs/gen0/model.pt (or a folder of runs)")
    if not outs:
        raise UserError("no --out given: pass --out gen0.onnx, or a folder for several checkpoints")
    ckpts = expand_checkpoints(checkpoints)
    out_paths = [Path(o).expanduser() for o in outs]
    if len(out_paths) == len(ckpts) and not (len(ckpts) == 1 and out_paths[0].suffix != ".onnx"):
        pairs = list(zip(ckpts, out_paths))
    elif len(out_paths) == 1 and out_paths[0].suffix != ".onnx":
        folder = out_paths[0]
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file; for several checkpoints give a folder")
        pairs = [(c, folder / f"{_run_name(c)}.onnx") for c in ckpts]
    else:
        raise UserError(
            f"{len(ckpts)} checkpoints but {len(out_paths)} --out values: give one --out per --checkpoint, "
            "or one --out folder (e.g. --out onnx/)"
        )
    names = [p.resolve() for _, p in pairs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UserError(f"two checkpoints would be exported to {dup}; give one --out per --checkpoint")
    return pairs


def export_many(
    checkpoints: Sequence[str | os.PathLike],
    outs: Sequence[str | os.PathLike],
    opset: int | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`export_checkpoint` over :func:`plan_exports`; stops at the first failure."""
    return [export_checkpoint(c, o, opset, **kwargs) for c, o in plan_exports(checkpoints, outs)]
