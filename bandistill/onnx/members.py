"""The members of an ensemble: bandistill ONNX files, read, ordered, checked, and run.

A member is a file written by :func:`bandistill.onnx.export.export_checkpoint`, or a merged
ensemble written by :func:`bandistill.onnx.merge.save_merged_onnx` (itself a valid member).
Members are ordered by generation, then by file name, so a chain's files come out as
teacher, BAN-1, BAN-2, ... whatever their names. Members that cannot be averaged (another
class count, input, label names or training data) are refused with one line naming two
that differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bandistill.bane import to_log_probs
from bandistill.errors import UserError
from bandistill.onnx.meta import FORMAT, load_model, model_opset, read_metadata, weights_digest


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

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint it was exported from, or None when the metadata names none.

        Exports record the path relative to the ONNX file's folder (so a moved run folder exports the same
        bytes); older exports recorded it absolute, which joining leaves as it is.
        """
        recorded = self.metadata.get("checkpoint")
        return self.path.parent / recorded if recorded else None

    def network_digests(self) -> list[str]:
        """The checkpoint digest of each network the model holds (the members of a merged ensemble)."""
        if self.kind != "ensemble":
            return [d for d in [self.metadata.get("checkpoint_digest")] if d]
        try:
            inner = json.loads(self.metadata.get("members", "[]"))
            return [m["checkpoint_digest"] for m in inner if isinstance(m, dict) and m.get("checkpoint_digest")]
        except (ValueError, TypeError):
            return []

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


def read_member(path: str | os.PathLike) -> OnnxMember:
    """Read one model's bandistill metadata (weights are not loaded)."""
    import onnx  # the library

    path = Path(path)
    model = load_model(path, weights=False)
    meta = read_metadata(model)
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is an ONNX model without bandistill metadata (generation, dataset, input contract); "
            "export it with 'bandistill export'"
        )
    recorded = meta.get("weights_digest")
    if recorded:
        actual = weights_digest(model)
        if actual is not None and actual != recorded:
            raise UserError(f"{path} was altered after export: its weights' digest is {actual}, its metadata "
                            f"records {recorded}; export it again from its checkpoint ({meta.get('checkpoint', '?')})")
    try:
        inp = model.graph.input[0].type.tensor_type
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
            input_shape=tuple(int(d.dim_value) for d in inp.shape.dim[1:]),
            input_dtype=onnx.helper.tensor_dtype_to_np_dtype(inp.elem_type).name,
            val_split=float(meta.get("val_split", "0") or 0.0),
            test_accuracy=None if test_acc is None else float(test_acc),
            opset=model_opset(model),
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
    from bandistill.identity import file_digest

    seen: dict[str, OnnxMember] = {}
    for m in members:  # the same file under two names (a copy, a hard link) would count one model twice
        twin = seen.setdefault(file_digest(m.path), m)
        if twin is not m:
            raise UserError(f"{twin.path} and {m.path} are the same model (identical files); pass each member once")
    holders: dict[str, OnnxMember] = {}
    for m in sorted(members, key=lambda m: m.kind == "ensemble"):  # single networks first
        for digest in m.network_digests():  # a merged ensemble next to its own members counts them twice
            other = holders.setdefault(digest, m)
            if other is not m and m.kind == "ensemble":
                raise UserError(f"{m.path} is a merged ensemble that already holds the network of {other.path}; "
                                "pass the merged file or its members, not both")
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


def load_members(paths: Iterable[str | os.PathLike], *, allow_mixed: bool = False) -> list[OnnxMember]:
    """Read the files, order them by generation then name, and check they can be averaged."""
    members = order_members([read_member(p) for p in paths])
    validate_members(members, allow_mixed=allow_mixed)
    return members


def run_members(
    members: Sequence[OnnxMember],
    images,
    *,
    provider: str = "auto",
    batch_size: int = 256,
    cuda_graph: bool = False,
    progress=None,
    task=None,
) -> tuple[list[np.ndarray], list[str]]:
    """Each member's log-probabilities ``(N, classes)`` (float64), and the provider its session really ran on.

    One onnxruntime session per member, run through IO binding
    (:func:`bandistill.onnx.runtime.run_bound`): the images go to the device once for all
    members. ``cuda_graph`` runs fixed ``batch_size`` batches captured as CUDA graphs.
    """
    import torch

    from bandistill.onnx.runtime import create_session, run_bound, session_device, session_provider

    images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    on_device: dict[str, torch.Tensor] = {}
    log_probs, providers = [], []
    for m in members:
        session = create_session(m.path, provider, cuda_graph=cuda_graph)
        device = session_device(session)
        x = on_device.setdefault(str(device), images.to(device))  # once per device, not per member
        raw = run_bound(session, x, batch_size=batch_size, static=cuda_graph,
                        on_batch=(lambda n: progress.advance(task, n)) if progress is not None else None)
        log_probs.append(to_log_probs(raw, m.output))
        providers.append(session_provider(session))
        del session
    return log_probs, providers


def member_log_probs(members: Sequence[OnnxMember], images, **kwargs: Any) -> list[np.ndarray]:
    """Each member's log-probabilities (:func:`run_members` without the providers)."""
    return run_members(members, images, **kwargs)[0]


def member_probabilities(
    onnx_paths: Sequence[str | os.PathLike],
    images,
    *,
    provider: str = "auto",
    batch_size: int = 256,
    allow_mixed: bool = False,
) -> list[np.ndarray]:
    """Each model's probabilities ``(N, classes)`` on ``images`` (uint8 ``(N, C, H, W)``).

    Unlike :func:`load_members` the models keep the order they are given in (a pipeline
    that knows its generations passes them in order); they are still validated as
    ensemble members (:func:`validate_members`).
    """
    members = [read_member(p) for p in onnx_paths]
    validate_members(members, allow_mixed=allow_mixed)
    return [np.exp(lp) for lp in member_log_probs(members, images, provider=provider, batch_size=batch_size)]
