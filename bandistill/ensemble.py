"""The Born-Again Network Ensemble (BANE) on onnxruntime: load, order, check, evaluate, merge.

Members are ONNX files written by :func:`bandistill.export.export_checkpoint` (or a merged
ensemble written by :func:`save_merged_onnx`, which is itself a valid member). They are
ordered by generation, then by file name, so "the first k members" means the teacher and
its first k-1 students -- the paper's Ens*k prefix ensembles.

The ensemble averages the members' probabilities by default (``average="probs"``); with
``average="logits"`` it averages their logits (equivalently their log-softmax, which only
differs by a per-sample constant) and takes the softmax of the mean. Every figure is
computed from the resulting probabilities (:mod:`bandistill.metrics`).

:func:`save_merged_onnx` writes the whole ensemble as ONE ONNX graph: the members side by
side on a shared ``image`` input, a softmax each, and their mean (output ``probs``), so a
deployment runs one session instead of N. It is checked against the averaged separate
members in onnxruntime before it is kept.
"""

from __future__ import annotations

import glob
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bandistill import __version__
from bandistill.errors import UserError, VerificationError
from bandistill.export import BATCH_DIM, FORMAT, INPUT_NAME, check_replaceable, read_metadata, set_metadata
from bandistill.metrics import PROB_FLOOR, classification_metrics, log_softmax

AVERAGES = ("probs", "logits")
SPLITS = ("test", "val", "train")
PREDICTION_SUFFIXES = (".npy", ".npz", ".csv")
MERGED_OUTPUT = "probs"
#: The merged graph must match the averaged members to this (max |probability difference|).
MERGE_TOLERANCE = 1e-4
#: Top-2 probability gaps below this count as ties when comparing predictions.
TIE_GAP = 1e-5
_GLOB_CHARS = set("*?[")


@dataclass
class OnnxMember:
    """One bandistill ONNX model and what its metadata says about it."""

    path: Path
    generation: int
    kind: str  # "member" (one network) or "ensemble" (a merged BANE)
    output: str  # "logits" or "probs"
    model: str
    num_classes: int
    classes: list[str]
    dataset: str
    fingerprint: str
    input_shape: tuple[int, ...]
    input_dtype: str
    val_split: float = 0.0
    test_accuracy: float | None = None
    opset: int | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def networks(self) -> int:
        """How many networks the model holds (more than one for a merged ensemble)."""
        if self.kind != "ensemble":
            return 1
        try:
            return len(json.loads(self.metadata.get("members", "[]"))) or 1
        except ValueError:
            return 1

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "generation": self.generation,
            "kind": self.kind,
            "networks": self.networks,
            "model": self.model,
            "dataset": self.dataset,
            "dataset_fingerprint": self.fingerprint,
        }


# -- finding and reading members -------------------------------------------------------------------
def resolve_onnx_paths(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files from paths, quoted globs (``'onnx/gen*.onnx'``) and folders (their ``*.onnx``).

    A shell-expanded glob arrives as several paths and needs nothing special. Duplicates
    (the same file twice) are dropped. Raises :class:`UserError` for a path that does not
    exist, a glob that matches nothing, or no path at all.
    """
    found: list[Path] = []
    for raw in specs:
        text = os.fspath(raw)
        p = Path(text).expanduser()
        if p.exists():
            if p.is_dir():
                inside = sorted(p.glob("*.onnx"))
                if not inside:
                    raise UserError(f"folder {p} holds no .onnx file; export generations with 'bandistill export'")
                found.extend(inside)
            else:
                found.append(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text)) if Path(m).is_file())
            if not matches:
                raise UserError(f"--onnx {text} matches no file; check the folder (e.g. ls {Path(text).parent})")
            found.extend(matches)
        else:
            raise UserError(f"ONNX model {p} does not exist; pass files written by 'bandistill export'")
    if not found:
        raise UserError("no ONNX model given: pass --onnx gen*.onnx (files written by 'bandistill export')")
    unique: list[Path] = []
    seen: set[Path] = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _load_proto(path: Path, *, weights: bool):
    import onnx
    from google.protobuf.message import DecodeError

    if zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not an ONNX model (it looks like a PyTorch checkpoint); "
            f"export it first: bandistill export --checkpoint {path} --out {path.with_suffix('.onnx').name}"
        )
    try:
        proto = onnx.load(str(path), load_external_data=weights)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise UserError(f"{path} is not an ONNX model ({type(exc).__name__}); pass files written by 'bandistill export'") from None
    if proto.ir_version == 0 or not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise UserError(f"{path} is not an ONNX model (no graph); pass files written by 'bandistill export'")
    return proto


def read_member(path: str | os.PathLike) -> OnnxMember:
    """Read one model's bandistill metadata (weights are not loaded)."""
    path = Path(path)
    proto = _load_proto(path, weights=False)
    meta = read_metadata(proto)
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is an ONNX model without bandistill metadata (generation, dataset, input contract); "
            "export it with 'bandistill export'"
        )
    try:
        inp = proto.graph.input[0].type.tensor_type
        shape = tuple(int(d.dim_value) for d in inp.shape.dim[1:])
        import onnx

        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.elem_type).name
        opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        test_acc = json.loads(meta.get("test_accuracy", "null"))
        return OnnxMember(
            path=path,
            generation=int(meta["generation"]),
            kind=meta.get("kind", "member"),
            output=meta.get("output", "logits"),
            model=meta.get("model", "?"),
            num_classes=int(meta["num_classes"]),
            classes=list(json.loads(meta.get("classes", "[]"))),
            dataset=meta.get("dataset", ""),
            fingerprint=meta.get("dataset_fingerprint", ""),
            input_shape=shape,
            input_dtype=dtype,
            val_split=float(meta.get("val_split", "0") or 0.0),
            test_accuracy=None if test_acc is None else float(test_acc),
            opset=opset,
            metadata=meta,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path} has broken bandistill metadata ({type(exc).__name__}: {exc}); export it again") from None


def order_members(members: Sequence[OnnxMember]) -> list[OnnxMember]:
    """By generation (from the metadata), then by file name, then by full path."""
    return sorted(members, key=lambda m: (m.generation, m.name, str(m.path)))


def validate_members(members: Sequence[OnnxMember], *, allow_mixed: bool = False) -> None:
    """Refuse members that cannot be averaged, with one line naming the two that differ."""
    if not members:
        raise UserError("no ONNX model given: pass --onnx gen*.onnx")
    first = members[0]
    for m in members[1:]:
        if m.num_classes != first.num_classes:
            raise UserError(
                f"members predict different class counts: {first.name} {first.num_classes}, {m.name} {m.num_classes}; "
                "an ensemble needs one label space"
            )
    for m in members[1:]:
        if (m.input_shape, m.input_dtype) != (first.input_shape, first.input_dtype):
            raise UserError(
                f"members take different inputs: {first.name} {first.input_dtype}{list(first.input_shape)}, "
                f"{m.name} {m.input_dtype}{list(m.input_shape)}; ensemble models of one dataset and image size"
            )
    for m in members[1:]:
        if m.classes and first.classes and m.classes != first.classes:
            raise UserError(f"members name their classes differently ({first.name} vs {m.name}); their outputs do not line up")
    if not allow_mixed:
        for m in members[1:]:
            if m.fingerprint != first.fingerprint:
                raise UserError(
                    f"members were trained on different data: {first.name} on {first.dataset} ({first.fingerprint}), "
                    f"{m.name} on {m.dataset} ({m.fingerprint}); pass --allow-mixed to ensemble them anyway"
                )


def load_members(specs: Iterable[str | os.PathLike], *, allow_mixed: bool = False) -> list[OnnxMember]:
    """Resolve paths/globs, read, order by generation then name, and validate."""
    members = order_members([read_member(p) for p in resolve_onnx_paths(specs)])
    validate_members(members, allow_mixed=allow_mixed)
    return members


# -- data ---------------------------------------------------------------------------------------
def _split_arrays(ds, split: str):
    if split == "test":
        return ds.test_images, ds.test_labels
    if split == "train":
        return ds.train_images, ds.train_labels
    if ds.val_images is None:
        raise UserError("--split val needs models trained with --val-split; use --split test")
    return ds.val_images, ds.val_labels


def load_split(members: Sequence[OnnxMember], dataset=None, *, data_dir=None, split: str = "test"):
    """``(dataset, images, labels, warnings)`` for the members, checked against them.

    ``dataset`` is a name, an :class:`~bandistill.data.ImageDataset`, or None for the
    members' own dataset (from their metadata).
    """
    from bandistill.data import ImageDataset, load_dataset

    if split not in SPLITS:
        raise UserError(f"unknown --split '{split}': use {', '.join(SPLITS)}")
    first = members[0]
    warnings: list[str] = []
    if not isinstance(dataset, ImageDataset):
        name = dataset or first.dataset
        if not name:
            raise UserError("the models do not name their dataset; pass --dataset")
        val_split = first.val_split if name.lower() == first.dataset.lower() else 0.0
        dataset = load_dataset(name, data_dir, val_split=val_split)
    ds = dataset
    if ds.num_classes != first.num_classes:
        raise UserError(
            f"dataset {ds.name} has {ds.num_classes} classes but the models predict {first.num_classes}; "
            f"pass the dataset they were trained on (--dataset {first.dataset})"
        )
    if tuple(ds.image_shape) != tuple(first.input_shape):
        raise UserError(
            f"dataset {ds.name} has images of shape {list(ds.image_shape)} but the models take {list(first.input_shape)}; "
            f"pass the dataset they were trained on (--dataset {first.dataset})"
        )
    for m in members:
        if m.fingerprint and m.fingerprint != ds.fingerprint and m.kind == "member":
            warnings.append(f"{m.name} was trained on {m.dataset} ({m.fingerprint}), evaluated on {ds.name} ({ds.fingerprint})")
    images, labels = _split_arrays(ds, split)
    return ds, images, labels, warnings


# -- running and combining --------------------------------------------------------------------------
def member_log_probs(
    members: Sequence[OnnxMember],
    images,
    *,
    provider: str = "auto",
    batch_size: int = 256,
    progress=None,
    task=None,
) -> list[np.ndarray]:
    """Each member's log-probabilities ``(N, classes)`` (float64), one onnxruntime session each."""
    from bandistill.onnx_runtime import create_session, run_batched

    out = []
    for m in members:
        session = create_session(m.path, provider)
        raw = run_batched(
            session, images, batch_size=batch_size,
            on_batch=(lambda n: progress.advance(task, n)) if progress is not None else None,
        )
        out.append(to_log_probs(raw, m.output))
        del session
    return out


def member_probabilities(
    onnx_paths: Sequence[str | os.PathLike],
    images,
    *,
    provider: str = "auto",
    batch_size: int = 256,
    allow_mixed: bool = False,
) -> list[np.ndarray]:
    """Each model's probabilities ``(N, classes)`` on ``images`` (uint8 ``(N, C, H, W)``).

    Unlike :func:`evaluate_ensemble` the models keep the order they are given in (a
    pipeline that knows its generations passes them in order); they are still validated
    as ensemble members (:func:`validate_members`).
    """
    members = [read_member(p) for p in resolve_onnx_paths(onnx_paths)]
    validate_members(members, allow_mixed=allow_mixed)
    return [np.exp(lp) for lp in member_log_probs(members, images, provider=provider, batch_size=batch_size)]


def to_log_probs(raw: np.ndarray, output: str) -> np.ndarray:
    """A model's raw output (``logits``, or ``probs`` of a merged ensemble) as float64 log-probabilities."""
    if output == "probs":
        return np.log(np.maximum(raw.astype(np.float64), PROB_FLOOR))
    return log_softmax(raw)


def combine(log_probs: Sequence[np.ndarray], average: str = "probs") -> np.ndarray:
    """Ensemble probabilities from members' log-probabilities: mean of probs, or softmax of mean logits."""
    if average not in AVERAGES:
        raise UserError(f"unknown --average '{average}': use probs or logits")
    if average == "probs":
        return np.mean([np.exp(lp) for lp in log_probs], axis=0)
    return np.exp(log_softmax(np.mean(log_probs, axis=0)))


def _prefix_label(k: int, total: int) -> str:
    return f"BANE (all {total})" if k == total else f"ensemble of first {k}"


def evaluate_ensemble(
    onnx_paths: Iterable[str | os.PathLike],
    dataset=None,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 256,
    provider: str = "auto",
    average: str = "probs",
    allow_mixed: bool = False,
    predictions: str | os.PathLike | None = None,
    save_onnx: str | os.PathLike | None = None,
    progress: bool = False,
    return_probs: bool = False,
) -> dict[str, Any]:
    """Evaluate every member, every prefix ensemble and the whole BANE on a dataset split.

    Returns ``{"members": [...], "prefixes": [...], "ensemble": {...}, ...}`` where each entry
    has ``accuracy``, ``error`` (top-1), ``nll`` and ``ece`` (15 bins). ``prefixes`` holds the
    ensembles of the first 2, 3, ..., all members (the last equals ``ensemble``). With
    ``predictions`` the ensemble's probabilities are written there (.npy, .npz or .csv);
    with ``save_onnx`` the merged single-graph ensemble is written and checked on the same
    images (see :func:`save_merged_onnx`). ``return_probs`` adds the arrays under
    ``"probs"`` (ensemble) and ``"member_probs"``.
    """
    from bandistill.onnx_runtime import provider_name, resolve_providers
    from bandistill.progress import make_progress

    t0 = time.perf_counter()
    if average not in AVERAGES:
        raise UserError(f"unknown --average '{average}': use probs or logits")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    if predictions is not None and Path(predictions).suffix.lower() not in PREDICTION_SUFFIXES:
        raise UserError(f"--predictions {predictions}: use a .npy, .npz or .csv file name")
    if save_onnx is not None and Path(save_onnx).is_dir():
        raise UserError(f"--save-onnx {save_onnx} is a folder; give the .onnx file to write (e.g. bane.onnx)")
    providers = resolve_providers(provider)
    members = load_members(onnx_paths, allow_mixed=allow_mixed)
    ds, images, labels, warnings = load_split(members, dataset, data_dir=data_dir, split=split)
    labels_np = labels.numpy()

    with make_progress(progress) as bar:
        task = bar.add_task("ensemble", total=len(members) * int(images.shape[0]), info=f"{len(members)} members")
        log_probs = member_log_probs(members, images, provider=provider, batch_size=batch_size, progress=bar, task=task)

    member_rows = []
    for m, lp in zip(members, log_probs):
        row = {**m.summary(), **classification_metrics(np.exp(lp), labels_np)}
        if m.test_accuracy is not None:
            row["train_reported_accuracy"] = m.test_accuracy
        member_rows.append(row)
    prefixes = []
    probs = np.exp(log_probs[0]) if len(members) == 1 else None
    for k in range(2, len(members) + 1):
        probs = combine(log_probs[:k], average)
        prefixes.append({
            "members": k,
            "label": _prefix_label(k, len(members)),
            "names": [m.name for m in members[:k]],
            **classification_metrics(probs, labels_np),
        })
    whole = {
        "members": len(members),
        "label": _prefix_label(len(members), len(members)),
        "names": [m.name for m in members],
        **classification_metrics(probs, labels_np),
    }
    result: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "split": split,
        "samples": int(labels_np.shape[0]),
        "average": average,
        "provider": provider_name(providers),
        "members": member_rows,
        "prefixes": prefixes,
        "ensemble": whole,
        "warnings": warnings,
    }
    if predictions is not None:
        write_predictions(predictions, probs, labels_np, list(ds.classes))
        result["predictions"] = str(predictions)
    if save_onnx is not None:
        result["merged"] = save_merged_onnx(
            [m.path for m in members], save_onnx, average=average, allow_mixed=allow_mixed,
            check_images=images, reference=probs, labels=labels_np, provider=provider, batch_size=batch_size,
        )
    result["seconds"] = time.perf_counter() - t0
    if return_probs:
        result["probs"] = probs
        result["member_probs"] = [np.exp(lp) for lp in log_probs]
    return result


def write_predictions(path: str | os.PathLike, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    """The ensemble's probabilities: ``.npy`` (the array), ``.npz`` (with labels and predictions) or ``.csv``."""
    from bandistill.checkpoint import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PREDICTION_SUFFIXES:
        raise UserError(f"--predictions {path}: use a .npy, .npz or .csv file name")
    probs32 = np.asarray(probs, dtype=np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb" if suffix != ".csv" else "w") as f:
            if suffix == ".npy":
                np.save(f, probs32)
            elif suffix == ".npz":
                np.savez(f, probs=probs32, labels=labels, predictions=probs32.argmax(1), classes=np.array(classes))
            else:
                header = ["index", "label", "prediction"] + [f"p_{c}" for c in classes]
                f.write(",".join(header) + "\n")
                pred = probs32.argmax(1)
                for i, row in enumerate(probs32):
                    f.write(f"{i},{int(labels[i])},{int(pred[i])}," + ",".join(f"{v:.6g}" for v in row) + "\n")

    atomic_write(path, write)


# -- one graph for the whole ensemble ------------------------------------------------------------
def merge_members(members: Sequence[OnnxMember], average: str = "probs"):
    """One ``onnx.ModelProto``: members side by side on one ``image`` input, softmax each, mean.

    With ``average="logits"`` the mean is taken over the members' log-softmax and a softmax
    follows. The single output is ``probs`` ``float32 (batch, classes)``.
    """
    import onnx
    from onnx import TensorProto, compose, helper, version_converter

    if average not in AVERAGES:
        raise UserError(f"unknown --average '{average}': use probs or logits")
    protos = [_load_proto(m.path, weights=True) for m in members]
    default_opset = lambda p: next((o.version for o in p.opset_import if o.domain in ("", "ai.onnx")), 0)  # noqa: E731
    target = max(default_opset(p) for p in protos)
    for i, p in enumerate(protos):
        if default_opset(p) != target:
            try:
                protos[i] = version_converter.convert_version(p, target)
            except Exception as exc:
                raise UserError(
                    f"cannot bring {members[i].name} from opset {default_opset(p)} to {target} to merge it ({exc}); "
                    f"export every member with the same --opset"
                ) from None
    nodes, inits, sparse, infos, functions = [], [], [], [], []
    opsets: dict[str, int] = {}
    parts = []
    for i, (m, p) in enumerate(zip(members, protos)):
        p = compose.add_prefix(p, f"m{i}_", rename_inputs=False)
        g = p.graph
        in_name, out_name = g.input[0].name, g.output[0].name
        if in_name != INPUT_NAME:
            nodes.append(helper.make_node("Identity", [INPUT_NAME], [in_name], name=f"m{i}_input"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        sparse.extend(g.sparse_initializer)
        infos.extend(g.value_info)
        functions.extend(p.functions)
        for o in p.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), int(o.version))
        if average == "probs":
            if m.output == "probs":
                parts.append(out_name)
            else:
                nodes.append(helper.make_node("Softmax", [out_name], [f"m{i}_probs"], name=f"m{i}_softmax", axis=-1))
                parts.append(f"m{i}_probs")
        else:
            if m.output == "probs":
                floor = f"m{i}_floor"
                inits.append(helper.make_tensor(floor, TensorProto.FLOAT, [], [PROB_FLOOR]))
                nodes.append(helper.make_node("Max", [out_name, floor], [f"m{i}_clipped"], name=f"m{i}_clip"))
                nodes.append(helper.make_node("Log", [f"m{i}_clipped"], [f"m{i}_logprobs"], name=f"m{i}_log"))
            else:
                nodes.append(helper.make_node("LogSoftmax", [out_name], [f"m{i}_logprobs"], name=f"m{i}_logsoftmax", axis=-1))
            parts.append(f"m{i}_logprobs")
    if average == "probs":
        nodes.append(helper.make_node("Mean", parts, [MERGED_OUTPUT], name="ensemble_mean"))
    else:
        nodes.append(helper.make_node("Mean", parts, ["mean_logprobs"], name="ensemble_mean"))
        nodes.append(helper.make_node("Softmax", ["mean_logprobs"], [MERGED_OUTPUT], name="ensemble_softmax", axis=-1))

    first = members[0]
    image = onnx.ValueInfoProto()
    image.CopyFrom(protos[0].graph.input[0])
    image.name = INPUT_NAME
    image.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    probs = helper.make_tensor_value_info(MERGED_OUTPUT, TensorProto.FLOAT, [BATCH_DIM, first.num_classes])
    graph = helper.make_graph(
        nodes, f"bandistill_bane_{len(members)}", [image], [probs],
        initializer=inits, value_info=infos, sparse_initializer=sparse,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        functions=functions,
        producer_name="bandistill",
        producer_version=__version__,
    )
    model.ir_version = max(int(p.ir_version) for p in protos)
    fingerprints = sorted({m.fingerprint for m in members})
    datasets = sorted({m.dataset for m in members})
    base = first.metadata
    set_metadata(model, {
        "format": FORMAT,
        "format_version": base.get("format_version", "1"),
        "kind": "ensemble",
        "model": "+".join(m.model for m in members),
        "num_classes": str(first.num_classes),
        "classes": first.classes,
        "dataset": datasets[0] if len(datasets) == 1 else "+".join(datasets),
        "dataset_fingerprint": fingerprints[0] if len(fingerprints) == 1 else "mixed:" + ",".join(fingerprints),
        "generation": str(max(m.generation for m in members)),
        "input": base.get("input", ""),
        "input_shape": list(first.input_shape),
        "input_dtype": first.input_dtype,
        "output": "probs",
        "average": average,
        "normalization": base.get("normalization", ""),
        "val_split": first.val_split,
        "members": [
            {
                "name": m.name,
                "generation": m.generation,
                "model": m.model,
                "dataset_fingerprint": m.fingerprint,
                "checkpoint_digest": m.metadata.get("checkpoint_digest"),
                "test_accuracy": m.test_accuracy,
            }
            for m in members
        ],
        "test_accuracy": None,
        "version": __version__,
    })
    model.doc_string = (
        f"bandistill BANE of {len(members)} members ({', '.join(m.name for m in members)}), average of {average}. "
        f"{base.get('input', '')} Output probs: float32 (batch, classes), the ensemble's probabilities."
    )
    return model


def save_merged_onnx(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    average: str = "probs",
    allow_mixed: bool = False,
    check_images=None,
    reference: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    provider: str = "cpu",
    batch_size: int = 256,
    tolerance: float = MERGE_TOLERANCE,
) -> dict[str, Any]:
    """Write the ensemble of ``paths`` as one ONNX graph at ``out``, checked in onnxruntime.

    The merged session's probabilities on ``check_images`` (default: 64 seeded random
    images of the right shape) must match ``reference`` (default: the separate members'
    sessions, averaged) within ``tolerance``, with the same predicted class wherever the
    top two are not tied; otherwise :class:`VerificationError` and nothing is written.
    With ``labels``, the merged model's own accuracy is reported too.
    """
    import onnx

    from bandistill.checkpoint import atomic_write
    from bandistill.onnx_runtime import create_session, run_batched

    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--save-onnx {out} is a folder; give the .onnx file to write (e.g. {out / 'bane.onnx'})")
    check_replaceable(out, "--save-onnx")
    members = load_members(paths, allow_mixed=allow_mixed)
    if any(m.path.resolve() == out.resolve() for m in members):
        raise UserError(f"--save-onnx {out} is one of the members; write the ensemble to another file")
    model = merge_members(members, average)
    if model.ByteSize() > 2**31 - 1:
        raise UserError(f"the {len(members)} members are too large for one single-file ONNX graph (over 2 GB)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"onnx.checker rejects the merged ensemble: {str(exc).splitlines()[0]}") from exc
    source = "given images"
    if check_images is None:
        rng = np.random.default_rng(0)
        dtype = np.dtype(members[0].input_dtype)
        check_images = rng.integers(0, 256, size=(64, *members[0].input_shape)).astype(dtype)
        source = "random images"
    if reference is None:
        reference = combine(member_log_probs(members, check_images, provider=provider, batch_size=batch_size), average)
    info: dict[str, Any] = {}

    def write(tmp: str) -> None:
        onnx.save(model, tmp)
        session = create_session(tmp, provider)
        got = run_batched(session, check_images, batch_size=batch_size).astype(np.float64)
        diff = float(np.max(np.abs(got - reference))) if got.size else 0.0
        top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
        decided = (top2[:, 1] - top2[:, 0]) > TIE_GAP
        same = got.argmax(1) == reference.argmax(1)
        info.update({
            "samples": int(got.shape[0]),
            "check_images": source,
            "max_abs_prob_diff": diff,
            "prediction_agreement": float(same.mean()) if same.size else 1.0,
        })
        if labels is not None:
            info.update({f"merged_{k}": v for k, v in classification_metrics(got, labels).items()})
        if not np.isfinite(diff) or diff > tolerance or not np.all(same | ~decided):
            bad = int((~same & decided).sum())
            raise VerificationError(
                f"the merged graph disagrees with the averaged members (max |prob diff| {diff:.3g}, "
                f"{bad} different predictions on {got.shape[0]} images); "
                f"{out} {'kept its old contents' if out.exists() else 'not written'}"
            )

    atomic_write(out, write)
    return {
        "out": str(out),
        "members": [m.name for m in members],
        "average": average,
        "opset": next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "bytes": out.stat().st_size,
        **info,
    }
