"""onnxruntime sessions: which execution provider to use, and running a model over images.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as *available* on any machine, GPU or
not; asking for it where no GPU (or no matching CUDA/cuDNN) is usable makes onnxruntime
print a red error and quietly fall back to the CPU. So the choice here is made from three
facts: the provider is compiled in, PyTorch sees a usable GPU, and a tiny probe session
really gets the CUDA provider (checked once per process, with onnxruntime's logging muted
for the probe). On a CPU-only machine ``auto`` picks the CPU without a word, and
``cuda`` is a :class:`UserError`.

``torch`` is imported before ``onnxruntime`` on purpose: onnxruntime-gpu then finds the
CUDA and cuDNN libraries PyTorch has already loaded.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import numpy as np
import torch  # noqa: F401  (before onnxruntime, see the module docstring)

import onnxruntime as ort

from bandistill.errors import UserError

PROVIDERS = ("auto", "cuda", "cpu")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: onnxruntime log levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_QUIET = 3


def _probe_model() -> bytes:
    """A one-node float model, serialised, to see which providers a session really gets."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """``(usable, reason)``: can onnxruntime run on a GPU in this process?"""
    if CUDA_EP not in ort.get_available_providers():
        return False, f"this onnxruntime build ({ort.__version__}) has no CUDA execution provider; install onnxruntime-gpu"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is usable on this machine"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)  # a failed CUDA load logs on the default logger
    try:
        session = ort.InferenceSession(_probe_model(), options, providers=[CUDA_EP, CPU_EP])
        got = session.get_providers()
    except Exception as exc:  # a broken CUDA install: report it, never crash the choice
        return False, f"onnxruntime could not start its CUDA provider ({str(exc).splitlines()[0][:160]})"
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    if CUDA_EP not in got:
        return False, "onnxruntime could not load its CUDA provider (CUDA 12+/cuDNN 9 libraries missing or mismatched)"
    return True, "CUDA GPU usable"


def cuda_usable() -> bool:
    """True when onnxruntime can run on a GPU here (see :func:`cuda_status`)."""
    return cuda_status()[0]


def resolve_providers(provider: str = "auto") -> list[str]:
    """The execution-provider list for a session: ``auto`` / ``cuda`` / ``cpu``.

    ``cuda`` keeps the CPU provider as a fallback for nodes CUDA does not implement.
    Raises :class:`UserError` for ``cuda`` where no GPU is usable, or an unknown name.
    """
    key = (provider or "auto").lower()
    if key not in PROVIDERS:
        raise UserError(f"unknown --provider '{provider}': use auto, cuda or cpu")
    if key == "cpu":
        return [CPU_EP]
    usable, reason = cuda_status()
    if key == "cuda" and not usable:
        raise UserError(f"--provider cuda asked for a GPU but {reason}; use --provider cpu or auto")
    return [CUDA_EP, CPU_EP] if usable else [CPU_EP]


def provider_name(providers: Sequence[str]) -> str:
    """``cuda`` or ``cpu``: the provider a session (or a provider list) runs on first."""
    return "cuda" if providers and providers[0] == CUDA_EP else "cpu"


def create_session(
    model: str | os.PathLike | bytes,
    provider: str = "auto",
    *,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An :class:`onnxruntime.InferenceSession` on the chosen provider, warnings muted.

    ``model`` is a path or serialised bytes. ``threads`` sets intra-op threads (default:
    onnxruntime's choice, one per physical core). Raises :class:`UserError` when the file is
    not a model onnxruntime can load.
    """
    providers = resolve_providers(provider)
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    source = os.fspath(model) if not isinstance(model, (bytes, bytearray)) else bytes(model)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        name = source if isinstance(source, str) else "the model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"onnxruntime cannot load {name}: {first[:200]}") from None
    if providers[0] == CUDA_EP and session.get_providers()[0] != CUDA_EP:
        if (provider or "auto").lower() == "cuda":
            raise UserError("--provider cuda: onnxruntime could not put the model on the GPU; use --provider cpu")
    return session


def run_batched(
    session: ort.InferenceSession,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    output: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``session`` over ``images`` (its one input) in batches; the ``output``-th output, stacked.

    ``images`` must already have the input's element type (``uint8`` raw pixels for
    bandistill models): nothing is cast, because a float image in [0, 1] cast to uint8 is
    all 0s and 1s and would give confident garbage (:func:`check_input_dtype`).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    check_input_dtype(session, images.dtype)
    inp = session.get_inputs()[0]
    name = inp.name
    out_name = session.get_outputs()[output].name
    if batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        chunks.append(session.run([out_name], {name: batch})[0])
        if on_batch is not None:
            on_batch(batch.shape[0])
    if not chunks:
        return np.empty((0,), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def check_input_dtype(session: ort.InferenceSession, dtype) -> None:
    """Refuse images whose element type is not the model's input type, with one line; never cast."""
    want = _NP_TYPES.get(session.get_inputs()[0].type)
    got = np.dtype(dtype)
    if want is not None and got != want:
        what = "uint8 images (raw pixel values 0-255; normalisation is inside the graph)" if want == np.uint8 \
            else f"{np.dtype(want).name} images"
        raise UserError(f"the model takes {what} but was given {got.name} images; pass them as "
                        f"{np.dtype(want).name} (nothing is cast: a float image cast to uint8 would be 0s and 1s)")


_NP_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
}
