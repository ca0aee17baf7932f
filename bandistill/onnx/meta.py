"""What a bandistill ONNX file is: its input/output contract, its metadata, its opset.

Every model takes the **raw image**: input ``image``, ``uint8``, shape ``(batch, C, H, W)``
(NCHW, pixel values 0-255, ``batch`` dynamic); the dataset's normalisation is inside the
graph. A generation outputs ``logits``, a merged ensemble ``probs``, both
``float32 (batch, classes)``. Everything else a user would have to remember is stored in the
model's ``metadata_props`` under ``bandistill.*`` keys (:data:`METADATA_KEYS`).

This module also decides whether a path holds an ONNX model at all, both before reading one
(:func:`load_model`) and before writing over one (:func:`check_replaceable`): a ``model.pt``
or an ``.h5`` cache given by mistake is named as what it is and never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import onnx  # the library, not this package (absolute imports)

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
    "weights_digest", "test_accuracy", "teacher", "exporter", "version",
)

#: The opset an export writes when none is asked for: what torch.onnx's exporters (both of
#: them, torch 2.5-2.14) write by default, pinned so that a torch upgrade does not change it.
DEFAULT_OPSET = 20
#: The oldest opset torch.onnx can write.
MIN_OPSET = 7
#: The biggest single-file ONNX model protobuf allows.
MAX_PROTO_BYTES = 2**31 - 1


def check_model(model: onnx.ModelProto, what: str) -> None:
    """Refuse a graph that cannot be one ONNX file (over 2 GB: :class:`UserError`) or that
    ``onnx.checker`` rejects (:class:`VerificationError`), before anything is written.

    ``what`` names the model in the message, e.g. ``"the export of runs/gen0/model.pt"``."""
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise UserError(f"{what} is too large for a single-file ONNX model (over 2 GB)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"onnx.checker rejects {what}: {str(exc).splitlines()[0]}") from exc


# -- metadata ---------------------------------------------------------------------------------
def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``bandistill.*`` metadata of a model, without the prefix."""
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def set_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Write ``values`` as ``bandistill.*`` metadata (JSON for non-strings), replacing old keys."""
    keep = [p for p in model.metadata_props if not (p.key.startswith(PREFIX) and p.key[len(PREFIX):] in values)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def weights_digest(model: onnx.ModelProto) -> str | None:
    """sha256 (short) of the graph's weights: every initializer and ``Constant`` tensor, in graph order.

    Recorded by the export as ``bandistill.weights_digest``, it lets a reader prove that the
    weights are still the ones exported: a member whose weights were altered after export would
    otherwise be evaluated (and ensembled) without a word. None when the weights live in external
    files this reader did not load.
    """
    h = hashlib.sha256()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            return None
        h.update(init.SerializeToString(deterministic=True))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                h.update(attr.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def input_description(shape: Sequence[int]) -> str:
    """The input contract in words (stored in the metadata and the model's doc string)."""
    c, h, w = shape
    return (
        f"{INPUT_NAME}: uint8 tensor (batch, {c}, {h}, {w}), NCHW, raw pixel values 0-255 in the channel order "
        "used for training; batch is dynamic. Do not normalise: (image/255 - mean)/std is inside the graph."
    )


# -- opset --------------------------------------------------------------------------------------
def max_opset() -> int:
    """The newest opset the installed onnx knows."""
    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: int | None) -> None:
    """Raise :class:`UserError` for an opset this onnx cannot write (``None``: :data:`DEFAULT_OPSET`)."""
    if opset is not None and not MIN_OPSET <= opset <= max_opset():
        raise UserError(f"--opset {opset} is out of range: use {MIN_OPSET}..{max_opset()} "
                        f"(or leave it out for the default, {DEFAULT_OPSET})")


def model_opset(model: onnx.ModelProto) -> int | None:
    """The opset of the default (``ai.onnx``) domain a model imports, or None."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


# -- is this an ONNX model? ---------------------------------------------------------------------
def _what_else(path: Path) -> str | None:
    """What a non-empty file that is *not* an ONNX model looks like, or None for a model."""
    if zipfile.is_zipfile(path):
        return "a PyTorch checkpoint"
    with open(path, "rb") as f:
        if f.read(8).startswith(b"\x89HDF"):
            return "an HDF5 file"
    try:
        _parse(path, weights=False)
    except UserError:
        return "not an ONNX model"
    return None


def _parse(path: Path, *, weights: bool) -> onnx.ModelProto:
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=weights)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise UserError(f"{path} is not an ONNX model ({type(exc).__name__}); pass files written by 'bandistill export'") from None
    if model.ir_version == 0 or not model.graph.node or not model.graph.input or not model.graph.output:
        raise UserError(f"{path} is not an ONNX model (no graph); pass files written by 'bandistill export'")
    return model


def load_model(path: str | os.PathLike, *, weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, or one :class:`UserError` line saying what the file is instead.

    ``weights=False`` reads the graph and metadata without external weight files.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"ONNX model {path} does not exist; pass files written by 'bandistill export'")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an ONNX model; pass the .onnx files in it")
    if zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not an ONNX model (it looks like a PyTorch checkpoint); "
            f"export it first: bandistill export --checkpoint {path} --out {path.with_suffix('.onnx').name}"
        )
    return _parse(path, weights=weights)


def check_replaceable(out: Path, option: str) -> None:
    """Refuse to write an ONNX model over an existing file that is not one (a checkpoint, a cache...).

    Re-exporting over an earlier ``.onnx`` (or an empty file) is normal; replacing a
    ``model.pt`` or an ``.h5`` cache because of a swapped argument would lose the user's work.
    """
    if not out.is_file() or out.stat().st_size == 0:
        return
    what = _what_else(out)
    if what is not None:
        what = what if what.startswith("not") else f"{what}, not an ONNX model"
        raise UserError(f"{option} {out} already exists and is {what}; it was left as it is: "
                        "choose another file name for the .onnx")
