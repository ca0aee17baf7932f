"""Evaluating an ensemble: every member, the paper's ensembles of them and the whole BANE on a split.

Each member runs in its own onnxruntime session over the split's uint8 images; its output
becomes log-probabilities, and the ensembles average them (:mod:`bandistill.bane`). Every
figure -- top-1 error, NLL, ECE -- is computed from the resulting probabilities
(:mod:`bandistill.metrics`). The members are checked against the dataset they are
evaluated on (class count, image shape; a different fingerprint is a warning).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bandistill.bane import check_average, ensemble_probs
from bandistill.errors import UserError
from bandistill.metrics import classification_metrics
from bandistill.onnx.members import OnnxMember, load_members, run_members

SPLITS = ("test", "val", "train")
PREDICTION_SUFFIXES = (".npy", ".npz", ".csv")


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
    from bandistill.data import ImageDataset, eval_tensor, load_dataset, policy_from_json

    if split not in SPLITS:
        raise UserError(f"unknown --split '{split}': use {', '.join(SPLITS)}")
    first = members[0]
    warnings: list[str] = []
    if not isinstance(dataset, ImageDataset):
        name = dataset or first.dataset
        if not name:
            raise UserError("the models do not name their dataset; pass --dataset")
        val_split = first.val_split if name.lower() == first.dataset.lower() else 0.0
        try:  # members trained on a streamed tree name its view size in their view policy
            image_size = getattr(policy_from_json(first.metadata.get("view_policy") or "{}"), "size", None)
        except (ValueError, TypeError, KeyError):
            image_size = None
        dataset = load_dataset(name, data_dir, val_split=val_split, image_size=image_size)
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
    images, labels = _split_arrays(ds, split)
    images = eval_tensor(images)  # a streaming split: its evaluation views, decoded once for all members
    image_dtype = str(images.dtype).replace("torch.", "")
    for m in members:
        if m.input_dtype != image_dtype:  # never cast (see bandistill.onnx.runtime.check_input_dtype)
            raise UserError(f"{m.name} takes {m.input_dtype} images but {ds.name} images are {image_dtype} "
                            "(raw pixels); export the model with 'bandistill export', whose models take uint8")
    for m in members:
        if m.fingerprint and m.fingerprint != ds.fingerprint and m.kind == "member":
            warnings.append(f"{m.name} was trained on {m.dataset} ({m.fingerprint}), evaluated on {ds.name} ({ds.fingerprint})")
    return ds, images, labels, warnings


def named_ensembles(members: Sequence[OnnxMember], log_probs: Sequence[np.ndarray], labels: np.ndarray,
                    average: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The paper's ensembles of the members (Ens*k, Ens(0..k): :func:`bandistill.bane.ensemble_probs`,
    as the born-again report computes them) with their figures, and the whole BANE's probabilities."""
    named = ensemble_probs(log_probs, [m.generation for m in members], average)
    rows = [{"name": ens.name, "members": len(ens.members), "with_teacher": ens.with_teacher,
             "prefix": ens.members == tuple(range(len(ens.members))),  # the first k members
             "names": [members[i].name for i in ens.members], **classification_metrics(p, labels)}
            for ens, p in named]
    whole = named[-1][1] if named else np.exp(log_probs[0])  # the last one is every member
    return rows, whole


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
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """Evaluate every member, the paper's ensembles of them, and the whole BANE on a dataset split.

    Returns ``{"members": [...], "ensembles": [...], "prefixes": [...], "ensemble": {...}, ...}``
    where each entry has ``accuracy``, ``error`` (top-1), ``nll`` and ``ece`` (15 bins).
    ``ensembles`` are :func:`bandistill.bane.ensemble_probs`' for the members' generations
    (for a chain gen0..genN: Ens*2 .. Ens*N without the teacher, then Ens(0..1) .. Ens(0..N));
    ``prefixes`` are those of them made of the first k members, and ``ensemble`` is the
    whole (``label`` "BANE (Ens(0..N))"). With
    ``predictions`` the ensemble's probabilities are written there (.npy, .npz or .csv);
    with ``save_onnx`` the merged single-graph ensemble is written and checked on the same
    images (see :func:`save_merged_onnx`). ``return_probs`` adds the arrays under
    ``"probs"`` (ensemble) and ``"member_probs"``. ``provider`` is asked for; the provider
    each session really ran on is in its member row and in ``"provider"`` (``cuda``,
    ``cpu`` or ``mixed``). ``cuda_graph`` runs every session as a CUDA graph at ``batch_size``.
    """
    from bandistill.onnx.merge import save_merged_onnx
    from bandistill.onnx.runtime import provider_name, resolve_providers
    from bandistill.progress import make_progress

    t0 = time.perf_counter()
    check_average(average)
    if batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    if predictions is not None and Path(predictions).suffix.lower() not in PREDICTION_SUFFIXES:
        raise UserError(f"--predictions {predictions}: use a .npy, .npz or .csv file name")
    if save_onnx is not None and Path(save_onnx).is_dir():
        raise UserError(f"--save-onnx {save_onnx} is a folder; give the .onnx file to write (e.g. bane.onnx)")
    asked = provider_name(resolve_providers(provider, cuda_graph=cuda_graph))  # refuses before any work
    members = load_members(onnx_paths, allow_mixed=allow_mixed)
    for option, target in (("--predictions", predictions), ("--save-onnx", save_onnx)):
        member = next((m for m in members if target is not None and _same_file(m.path, target)), None)
        if member is not None:
            raise UserError(f"{option} {target} is the member {member.name} being evaluated; it was left as it is: "
                            "choose another file name")
    ds, images, labels, warnings = load_split(members, dataset, data_dir=data_dir, split=split)
    labels_np = labels.numpy()

    with make_progress(progress) as bar:
        task = bar.add_task("ensemble", total=len(members) * int(images.shape[0]), info=f"{len(members)} members")
        log_probs, ran_on = run_members(members, images, provider=provider, batch_size=batch_size,
                                        cuda_graph=cuda_graph, progress=bar, task=task)
    for m, where in zip(members, ran_on):
        if where != asked:  # only possible with auto: --provider cuda refuses instead
            warnings.append(f"{m.name} ran on onnxruntime's {where.upper()} provider, not {asked.upper()}")

    member_rows = []
    for m, lp, where in zip(members, log_probs, ran_on):
        row = {**m.summary(), "provider": where, **classification_metrics(np.exp(lp), labels_np)}
        if m.test_accuracy is not None:
            row["train_reported_accuracy"] = m.test_accuracy
            far = _far_from_reported(m, row["accuracy"], int(labels_np.shape[0]), ds.fingerprint, split)
            if far:
                warnings.append(far)
        member_rows.append(row)
    ensembles, probs = named_ensembles(members, log_probs, labels_np, average)
    prefixes = [e for e in ensembles if e["prefix"]]
    whole = dict(ensembles[-1]) if ensembles else {"name": members[0].name, "members": 1, "prefix": True,
                                                   "names": [members[0].name], **classification_metrics(probs, labels_np)}
    whole["label"] = f"BANE ({whole['name']})"
    result: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "split": split,
        "samples": int(labels_np.shape[0]),
        "average": average,
        "provider": ran_on[0] if len(set(ran_on)) == 1 else "mixed",
        "members": member_rows,
        "ensembles": ensembles,
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
            check_images=images, reference=probs, reference_provider=result["provider"], labels=labels_np,
            provider=provider, batch_size=batch_size,
        )
    result["seconds"] = time.perf_counter() - t0
    if return_probs:
        result["probs"] = probs
        result["member_probs"] = [np.exp(lp) for lp in log_probs]
    return result


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist yet
        return Path(a).resolve() == Path(b).resolve()


def _far_from_reported(m: OnnxMember, accuracy: float, samples: int, fingerprint: str, split: str) -> str | None:
    """A warning when a member measures far from the test accuracy its metadata records.

    Only where the two are the same measurement (the test split of the data it was trained on).
    The export checks parity with PyTorch, so they agree to a few images; much more means the
    file is not the model its metadata describes (altered weights, a damaged file). A warning,
    not a refusal: the figures printed are true for the file given, and a file without a
    weights digest cannot be proven altered (one with a digest is refused when read).
    """
    if split != "test" or m.kind != "member" or not samples or m.fingerprint != fingerprint:
        return None
    gap = abs(accuracy - m.test_accuracy) * samples
    if gap <= max(3.0, 0.02 * samples):
        return None
    return (f"{m.name} measures {100 * (1 - accuracy):.1f}% error but its metadata records "
            f"{100 * (1 - m.test_accuracy):.1f}% from training on these images: the file may have been altered "
            "or damaged; export it again from its checkpoint")


def write_predictions(path: str | os.PathLike, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    """The ensemble's probabilities: ``.npy`` (the array), ``.npz`` (with labels and predictions) or ``.csv``."""
    from bandistill.atomic import atomic_write

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


