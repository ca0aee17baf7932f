"""ONNX export of a generation: a self-describing model, checked in onnxruntime before it is kept.

1. The checkpoint's network is wrapped in :class:`NormalizedModel`, so the graph takes the
   raw ``uint8`` image and normalises it itself (the contract in :mod:`bandistill.onnx.meta`):
   a deployment cannot forget the normalisation or apply the wrong one.
2. ``torch.onnx`` exports it with a dynamic batch axis (the ``dynamo`` exporter from opset
   18, the TorchScript one below), the metadata is attached and ``onnx.checker`` must pass.
3. The file, written beside its final name, is run in onnxruntime on real test images and
   compared with the PyTorch model exactly as ``train`` evaluated it
   (:func:`bandistill.inference.predict_logits`), at two batch sizes. Above tolerance it is a
   :class:`VerificationError` and nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx  # the library (absolute imports)
import torch
from torch import nn

from bandistill import __version__
from bandistill.checkpoint import (
    atomic_write, checkpoint_dataset, load_checkpoint, model_from_checkpoint, normalization,
)
from bandistill.errors import UserError, VerificationError
from bandistill.identity import checkpoint_identity
from bandistill.onnx.meta import (
    BATCH_DIM, DEFAULT_OPSET, FORMAT, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, check_model, check_opset,
    check_replaceable, input_description, model_opset, set_metadata, weights_digest,
)

EXPORTERS = ("auto", "dynamo", "torchscript")
#: The torch.export-based exporter writes opset 18 or newer; older opsets use the TorchScript one.
DYNAMO_MIN_OPSET = 18
#: Default parity tolerance: max |logit difference| <= tolerance * max(1, max |logit|).
DEFAULT_TOLERANCE = 1e-3
#: How many test images the parity check runs (all of them when the split is smaller).
PARITY_SAMPLES = 256


class NormalizedModel(nn.Module):
    """``uint8 (B, C, H, W)`` image -> logits, with the dataset normalisation inside.

    The arithmetic is the same sequence of float32 ops as
    :func:`bandistill.data.views.normalize`, so ONNX and PyTorch agree to rounding.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) / 255.0
        return self.net((x - self.mean) / self.std)


def choose_exporter(exporter: str, opset: int | None) -> str:
    """``dynamo`` or ``torchscript`` for an ``--exporter`` choice and opset (None: the default)."""
    exporter = (exporter or "auto").lower()
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter '{exporter}': use auto, dynamo or torchscript")
    check_opset(opset)
    opset = DEFAULT_OPSET if opset is None else opset
    if exporter == "auto":
        return "torchscript" if opset < DYNAMO_MIN_OPSET else "dynamo"
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise UserError(
            f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer, not {opset}; "
            "use --exporter torchscript (or auto) for older opsets"
        )
    return exporter


def export_graph(module: nn.Module, sample: torch.Tensor, opset: int, exporter: str) -> onnx.ModelProto:
    """Export ``module`` (one uint8 input) to a model with a dynamic batch axis named ``batch``."""
    module.eval()
    # The exporters print progress and warnings (to stdout, which --json keeps clean).
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                module, (sample,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"image": {0: torch.export.Dim(BATCH_DIM, min=1)}}, external_data=False,
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                module, (sample,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}, do_constant_folding=True,
            )
            model = onnx.load_from_string(buffer.getvalue())
    for value in (*model.graph.input, *model.graph.output):  # name the batch axis the same everywhere
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    return model


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (its ``model.pt``)."""
    from bandistill.train import MODEL_FILE

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        raise UserError(f"{p} is a folder without {MODEL_FILE}; pass a finished run folder or its {MODEL_FILE}")
    return p


def _parity_images(ckpt: dict[str, Any], dataset, data_dir, samples: int) -> torch.Tensor:
    """Real test images of the checkpoint's dataset for the parity check."""
    from bandistill.data import ImageDataset, eval_tensor

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
    images = eval_tensor(images[:samples])  # a streaming split: its evaluation views
    if images.shape[0] < 2:
        raise UserError(f"the parity check needs at least 2 images of {info['name']}, found {images.shape[0]}")
    return images


def _metadata(ckpt: dict[str, Any], ckpt_path: Path, out: Path, mean, std, shape: list[int],
              exporter: str) -> dict[str, Any]:
    """The ``bandistill.*`` metadata of one generation (see :data:`bandistill.onnx.meta.METADATA_KEYS`).

    ``checkpoint`` is the checkpoint's path relative to the ONNX file's folder: the file's bytes
    must not depend on where its run folder lives (``ban`` compares them after a folder moved).
    """
    info, config = ckpt["dataset"], ckpt.get("config") or {}
    return {
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
        "checkpoint": os.path.relpath(ckpt_path.resolve(), out.resolve().parent),
        "checkpoint_digest": checkpoint_identity(ckpt),
        "test_accuracy": (ckpt.get("metrics") or {}).get("test_accuracy"),
        "teacher": ckpt.get("teacher"),
        "exporter": exporter,
        "version": __version__,
    }


def check_parity(path: str | os.PathLike, images: torch.Tensor, reference: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Run the file in onnxruntime (CPU) at two batch sizes and compare with PyTorch's ``reference`` logits."""
    from bandistill.onnx.runtime import create_session, run_batched

    session = create_session(path, "cpu")
    got = run_batched(session, images, batch_size=images.shape[0])
    one = run_batched(session, images[:1], batch_size=1)  # a different batch size: the axis is dynamic
    diff = float(np.max(np.abs(np.concatenate([got, one]) - np.concatenate([reference, reference[:1]]))))
    return {
        "samples": int(images.shape[0]),
        "batch_sizes": [int(images.shape[0]), 1],
        "max_abs_logit_diff": diff,
        "tolerance": float(tolerance * max(1.0, float(np.abs(reference).max()))),
        "argmax_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
        "provider": "cpu",
    }


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

    ``opset`` None is :data:`~bandistill.onnx.meta.DEFAULT_OPSET`. ``dataset`` is an already
    loaded :class:`~bandistill.data.ImageDataset` (or a name) for the parity images; by
    default the checkpoint's own dataset is loaded from ``data_dir`` (default: the run's).
    Returns a summary with the parity figures. Raises :class:`UserError` for bad input and
    :class:`VerificationError` when onnxruntime and PyTorch disagree beyond
    ``tolerance * max(1, max|logit|)``; then nothing is written to ``out_path``.
    """
    from bandistill.inference import predict_logits

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
    chosen = choose_exporter(exporter, opset)
    opset = DEFAULT_OPSET if opset is None else opset
    ckpt = load_checkpoint(ckpt_path)
    missing = [k for k in ("model", "state_dict", "dataset", "normalization") if k not in ckpt]
    if missing:
        raise UserError(f"{ckpt_path} lacks {', '.join(missing)}; pass a model.pt written by 'bandistill train'")
    net = model_from_checkpoint(ckpt).float()
    mean, std = normalization(ckpt)
    module = NormalizedModel(net, mean, std).eval()
    images = _parity_images(ckpt, dataset, data_dir, parity_samples)
    reference = predict_logits(net, images, mean, std).numpy()
    shape = [int(s) for s in ckpt["dataset"].get("image_shape") or images.shape[1:]]
    exporter_label = f"torch.onnx {chosen} (torch {torch.__version__})"
    metadata = _metadata(ckpt, ckpt_path, out, mean, std, shape, exporter_label)
    parity: dict[str, Any] = {}

    def write(tmp: str) -> None:
        try:
            model = export_graph(module, images[:2].clone(), opset, chosen)
        except Exception as exc:
            other = "torchscript" if chosen == "dynamo" else "dynamo"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VerificationError(
                f"{chosen} export of {ckpt_path} failed ({type(exc).__name__}: {first[:200]}); "
                f"try --exporter {other}; nothing written to {out}"
            ) from exc
        set_metadata(model, metadata)
        model.producer_name, model.producer_version = "bandistill", __version__
        model.doc_string = (
            f"bandistill generation {metadata['generation']}: {metadata['model']} on {metadata['dataset']} "
            f"({metadata['num_classes']} classes). {metadata['input']} Output logits: float32 (batch, classes)."
        )
        model.graph.name = f"bandistill_gen{metadata['generation']}_{metadata['model']}".replace("-", "_")
        set_metadata(model, {"weights_digest": weights_digest(model)})
        check_model(model, f"the export of {ckpt_path}")
        onnx.save(model, tmp)
        try:
            parity.update(check_parity(tmp, images, reference, tolerance))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise VerificationError(f"onnxruntime failed to run the export of {ckpt_path}: {exc}; "
                                    f"nothing written to {out}") from exc
        diff, limit = parity["max_abs_logit_diff"], parity["tolerance"]
        if not np.isfinite(diff) or diff > limit:
            what = "kept its old contents" if out.exists() else "not written"
            raise VerificationError(
                f"onnxruntime logits of {out.name} differ from PyTorch by {diff:.3g} (> tolerance {limit:.3g}) "
                f"on {images.shape[0]} test images; {out} {what}"
            )
        parity["opset"] = model_opset(model)

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
        "opset": parity.pop("opset"),
        "exporter": exporter_label,
        "parity": parity,
        "test_accuracy": metadata["test_accuracy"],
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }
