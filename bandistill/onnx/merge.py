"""The whole ensemble as ONE ONNX graph, checked before it is kept.

:func:`merge_members` puts the members side by side on a shared ``image`` input, a softmax
each (a merged ensemble's ``probs`` are used as they are), and their mean, output ``probs``
``float32 (batch, classes)``; with ``average="logits"`` the mean of the log-softmaxes and a
softmax instead. A deployment then runs one session instead of N (and onnxruntime can
schedule the members' kernels as one graph). Members written at different opsets are first
brought to the newest one.

:func:`save_merged_onnx` checks the graph with ``onnx.checker``, then runs it in onnxruntime's
CPU provider next to the averaged separate members (there the comparison can be exact; CUDA's
may use TF32); only a graph that agrees is written under the final name. The merged file carries the same ``bandistill.*`` metadata as a generation
(``kind`` ``ensemble``, the members listed), so it is itself a valid member.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx  # the library (absolute imports)

from bandistill import __version__
from bandistill.bane import combine, check_average
from bandistill.atomic import atomic_write
from bandistill.errors import UserError, VerificationError
from bandistill.metrics import PROB_FLOOR, classification_metrics
from bandistill.onnx.members import OnnxMember, load_members, member_log_probs
from bandistill.onnx.meta import (
    BATCH_DIM, FORMAT, INPUT_NAME, check_model, check_replaceable, load_model, model_opset, set_metadata,
)

MERGED_OUTPUT = "probs"
#: The merged graph must match the averaged members to this (max |probability difference|).
MERGE_TOLERANCE = 1e-4
#: Top-2 probability gaps below this count as ties when comparing predictions.
TIE_GAP = 1e-5
#: Images of the CPU check when the members' probabilities were not computed on the CPU already.
CPU_CHECK_IMAGES = 256


def _common_opset(models: list[onnx.ModelProto], members: Sequence[OnnxMember]) -> list[onnx.ModelProto]:
    """The models at one default-domain opset (the newest among them), so their nodes can share a graph."""
    from onnx import version_converter

    target = max(model_opset(m) or 0 for m in models)
    out = []
    for model, member in zip(models, members):
        if (model_opset(model) or 0) != target:
            try:
                model = version_converter.convert_version(model, target)
            except Exception as exc:
                raise UserError(
                    f"cannot bring {member.name} from opset {model_opset(model)} to {target} to merge it ({exc}); "
                    "export every member with the same --opset"
                ) from None
        out.append(model)
    return out


def _to_average(i: int, member: OnnxMember, out_name: str, average: str) -> tuple[list, list, str]:
    """Nodes (and initializers) turning member ``i``'s output into what is averaged: probs or log-probs."""
    from onnx import TensorProto, helper

    if average == "probs":
        if member.output == "probs":
            return [], [], out_name
        return [helper.make_node("Softmax", [out_name], [f"m{i}_probs"], name=f"m{i}_softmax", axis=-1)], [], f"m{i}_probs"
    if member.output == "probs":  # log of the probabilities, floored as bandistill.bane.to_log_probs does
        floor = helper.make_tensor(f"m{i}_floor", TensorProto.FLOAT, [], [PROB_FLOOR])
        nodes = [helper.make_node("Max", [out_name, floor.name], [f"m{i}_clipped"], name=f"m{i}_clip"),
                 helper.make_node("Log", [f"m{i}_clipped"], [f"m{i}_logprobs"], name=f"m{i}_log")]
        return nodes, [floor], f"m{i}_logprobs"
    node = helper.make_node("LogSoftmax", [out_name], [f"m{i}_logprobs"], name=f"m{i}_logsoftmax", axis=-1)
    return [node], [], f"m{i}_logprobs"


def merge_members(members: Sequence[OnnxMember], average: str = "probs") -> onnx.ModelProto:
    """One model: members side by side on one ``image`` input, softmax each, mean.

    With ``average="logits"`` the mean is taken over the members' log-softmax and a softmax
    follows. The single output is ``probs`` ``float32 (batch, classes)``.
    """
    from onnx import TensorProto, compose, helper

    check_average(average)
    models = _common_opset([load_model(m.path, weights=True) for m in members], members)
    nodes, inits, sparse, infos, functions, parts = [], [], [], [], [], []
    opsets: dict[str, int] = {}
    for i, (member, model) in enumerate(zip(members, models)):
        prefixed = compose.add_prefix(model, f"m{i}_", rename_inputs=False)  # m0_..., m1_...: no name clashes
        g = prefixed.graph
        if g.input[0].name != INPUT_NAME:
            nodes.append(helper.make_node("Identity", [INPUT_NAME], [g.input[0].name], name=f"m{i}_input"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        sparse.extend(g.sparse_initializer)
        infos.extend(g.value_info)
        functions.extend(prefixed.functions)
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), int(o.version))
        more_nodes, more_inits, part = _to_average(i, member, g.output[0].name, average)
        nodes.extend(more_nodes)
        inits.extend(more_inits)
        parts.append(part)
    if average == "probs":
        nodes.append(helper.make_node("Mean", parts, [MERGED_OUTPUT], name="ensemble_mean"))
    else:
        nodes.append(helper.make_node("Mean", parts, ["mean_logprobs"], name="ensemble_mean"))
        nodes.append(helper.make_node("Softmax", ["mean_logprobs"], [MERGED_OUTPUT], name="ensemble_softmax", axis=-1))

    image = onnx.ValueInfoProto()
    image.CopyFrom(models[0].graph.input[0])
    image.name = INPUT_NAME
    image.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    probs = helper.make_tensor_value_info(MERGED_OUTPUT, TensorProto.FLOAT, [BATCH_DIM, members[0].num_classes])
    graph = helper.make_graph(nodes, f"bandistill_bane_{len(members)}", [image], [probs],
                              initializer=inits, value_info=infos, sparse_initializer=sparse)
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                               functions=functions, producer_name="bandistill", producer_version=__version__)
    merged.ir_version = max(int(m.ir_version) for m in models)
    set_metadata(merged, ensemble_metadata(members, average))
    merged.doc_string = (
        f"bandistill BANE of {len(members)} members ({', '.join(m.name for m in members)}), average of {average}. "
        f"{members[0].metadata.get('input', '')} Output probs: float32 (batch, classes), the ensemble's probabilities."
    )
    return merged


def ensemble_metadata(members: Sequence[OnnxMember], average: str) -> dict[str, Any]:
    """The merged model's ``bandistill.*`` metadata: a member's keys, ``kind`` ensemble, the members listed."""
    first, base = members[0], members[0].metadata
    fingerprints = sorted({m.fingerprint for m in members})
    datasets = sorted({m.dataset for m in members})
    return {
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
            {"name": m.name, "generation": m.generation, "model": m.model, "dataset_fingerprint": m.fingerprint,
             "checkpoint_digest": m.metadata.get("checkpoint_digest"), "test_accuracy": m.test_accuracy}
            for m in members
        ],
        "test_accuracy": None,
        "version": __version__,
    }


def save_merged_onnx(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    average: str = "probs",
    allow_mixed: bool = False,
    check_images=None,
    reference: np.ndarray | None = None,
    reference_provider: str = "cpu",
    labels: np.ndarray | None = None,
    provider: str = "cpu",
    batch_size: int = 256,
    tolerance: float = MERGE_TOLERANCE,
) -> dict[str, Any]:
    """Write the ensemble of ``paths`` as one ONNX graph at ``out``, checked in onnxruntime.

    The check runs on onnxruntime's **CPU** provider, where it can be exact: the merged
    session's probabilities on ``check_images`` (default: 64 seeded random images of the right
    shape) must match the separate members' sessions, averaged, within ``tolerance``, with the
    same predicted class wherever the top two are not tied; otherwise :class:`VerificationError`
    and nothing is written. On the CUDA provider the same comparison is not exact: it may run
    float32 convolutions as TF32 and picks kernels per session, so two sessions of the same
    member can differ by more than 1e-4 (issue 20, item 7).

    ``reference``: the averaged members' probabilities on ``check_images``, already computed
    on ``reference_provider``. From the CPU it is the check's reference (no second pass over
    the members); from another provider the check computes its own on the CPU, over the first
    :data:`CPU_CHECK_IMAGES` images, and the given one is compared, for the record only, with
    the merged graph run on ``provider`` (``provider_max_abs_prob_diff``). With ``labels``,
    the merged model's own accuracy on ``provider`` is reported too.
    """
    from bandistill.onnx.runtime import create_session, provider_name, resolve_providers, run_bound, session_provider

    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--save-onnx {out} is a folder; give the .onnx file to write (e.g. {out / 'bane.onnx'})")
    check_replaceable(out, "--save-onnx")
    members = load_members(paths, allow_mixed=allow_mixed)
    if any(m.path.resolve() == out.resolve() for m in members):
        raise UserError(f"--save-onnx {out} is one of the members; write the ensemble to another file")
    model = merge_members(members, average)
    check_model(model, f"the merged ensemble of {len(members)} members")
    source = "given images"
    if check_images is None:
        rng = np.random.default_rng(0)
        dtype = np.dtype(members[0].input_dtype)
        check_images = rng.integers(0, 256, size=(64, *members[0].input_shape)).astype(dtype)
        source = "random images"
    if reference is not None and reference_provider == "cpu":
        exact_images, exact_reference = check_images, reference
    else:
        exact_images = check_images[:CPU_CHECK_IMAGES]
        exact_reference = combine(member_log_probs(members, exact_images, provider="cpu", batch_size=batch_size),
                                  average)
    # the merged graph runs once more, on `provider`, when its accuracy or the given reference asks for it
    elsewhere = (labels is not None or reference is not None) and (
        exact_images is not check_images or provider_name(resolve_providers(provider)) != "cpu")
    info: dict[str, Any] = {}

    def write(tmp: str) -> None:
        onnx.save(model, tmp)
        session = create_session(tmp, "cpu")
        got = run_bound(session, exact_images, batch_size=batch_size).astype(np.float64)
        diff = float(np.max(np.abs(got - exact_reference))) if got.size else 0.0
        top2 = np.sort(exact_reference, axis=1)[:, -2:] if exact_reference.shape[1] > 1 \
            else np.zeros((len(exact_reference), 2))
        decided = (top2[:, 1] - top2[:, 0]) > TIE_GAP
        same = got.argmax(1) == exact_reference.argmax(1)
        info.update({
            "samples": int(got.shape[0]),
            "check_images": source,
            "checked_on": "cpu",
            "max_abs_prob_diff": diff,
            "prediction_agreement": float(same.mean()) if same.size else 1.0,
            "provider": "cpu",
        })
        if not np.isfinite(diff) or diff > tolerance or not np.all(same | ~decided):
            bad = int((~same & decided).sum())
            raise VerificationError(
                f"the merged graph disagrees with the averaged members on onnxruntime's CPU provider (max |prob "
                f"diff| {diff:.3g}, {bad} different predictions on {got.shape[0]} images); "
                f"{out} {'kept its old contents' if out.exists() else 'not written'}"
            )
        probs = got
        if elsewhere:
            there = create_session(tmp, provider)
            probs = run_bound(there, check_images, batch_size=batch_size).astype(np.float64)
            info["provider"] = session_provider(there)
            if reference is not None and reference is not exact_reference:
                info["provider_max_abs_prob_diff"] = float(np.max(np.abs(probs - reference))) if probs.size else 0.0
                info["reference_provider"] = reference_provider
        if labels is not None:
            info.update({f"merged_{k}": v for k, v in classification_metrics(probs, labels).items()})

    atomic_write(out, write)
    return {
        "out": str(out),
        "members": [m.name for m in members],
        "average": average,
        "opset": model_opset(model),
        "bytes": out.stat().st_size,
        **info,
    }
