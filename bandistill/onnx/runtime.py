"""onnxruntime sessions, and running one over images.

:func:`create_session` makes a session on the provider :mod:`bandistill.onnx.providers`
chose and then checks the provider it really got (``session.get_providers()``): with
``--provider cuda`` a session that landed on the CPU is a :class:`UserError`, never a
silent fallback; with ``auto`` it is allowed and reported (:func:`session_provider`).

Two ways to run a session over ``uint8 (N, C, H, W)`` images, with the same result:

* :func:`run_batched` -- ``session.run`` on NumPy batches: simple, host memory only (the
  export's parity check, tests);
* :func:`run_bound` -- IO binding: the images go to the session's device once (a torch
  tensor, on the GPU for the CUDA provider), each batch is bound in place by pointer and
  its output written straight into one device buffer, copied to the host once at the end.
  No per-batch host copies. With a fixed batch (``static=True``, which CUDA graphs need)
  every batch is copied into the same input buffer and the last one padded.

Neither ever casts: images of another element type than the model's input are refused
(:func:`check_input_dtype`), since a float image in [0, 1] cast to uint8 is 0s and 1s.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from bandistill.errors import UserError
from bandistill.onnx.providers import CUDA_EP, PROVIDERS, provider_name, resolve_providers  # noqa: F401

#: onnxruntime log levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_QUIET = 3


def create_session(
    model: str | os.PathLike | bytes,
    provider: str = "auto",
    *,
    threads: int | None = None,
    cuda_graph: bool = False,
) -> ort.InferenceSession:
    """An :class:`onnxruntime.InferenceSession` on the chosen provider, warnings muted.

    ``model`` is a path or serialised bytes. ``threads`` sets intra-op threads (default:
    onnxruntime's choice, one per physical core). Raises :class:`UserError` when the file is
    not a model onnxruntime can load, or when ``provider="cuda"`` and the session did not
    get the CUDA provider.
    """
    providers = resolve_providers(provider, cuda_graph=cuda_graph)
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    source = os.fspath(model) if not isinstance(model, (bytes, bytearray)) else bytes(model)
    name = os.path.basename(source) if isinstance(source, str) else "the model"
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cuda_graph:
            raise UserError(f"--cuda-graph: onnxruntime cannot capture {name} as a CUDA graph ({first[:160]}); "
                            "leave --cuda-graph out") from None
        raise UserError(f"onnxruntime cannot load {source if isinstance(source, str) else name}: {first[:200]}") from None
    if provider_name(providers) == "cuda" and session_provider(session) != "cuda" and (provider or "").lower() == "cuda":
        raise UserError(f"--provider cuda: onnxruntime put {name} on {', '.join(session.get_providers())}, "
                        "not CUDA; use --provider cpu")
    return session


def session_provider(session: ort.InferenceSession) -> str:
    """``cuda`` or ``cpu``: the provider this session really runs on (not the one asked for)."""
    return provider_name(session.get_providers())


def check_input_dtype(session: ort.InferenceSession, dtype) -> None:
    """Refuse images whose element type is not the model's input type, with one line; never cast."""
    want = _NP_TYPES.get(session.get_inputs()[0].type)
    got = np.dtype(dtype)
    if want is not None and got != want:
        what = "uint8 images (raw pixel values 0-255; normalisation is inside the graph)" if want == np.uint8 \
            else f"{np.dtype(want).name} images"
        raise UserError(f"the model takes {what} but was given {got.name} images; pass them as "
                        f"{np.dtype(want).name} (nothing is cast: a float image cast to uint8 would be 0s and 1s)")


def _check_batch_size(batch_size: int) -> None:
    if batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")


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
    bandistill models): nothing is cast (:func:`check_input_dtype`).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    check_input_dtype(session, images.dtype)
    _check_batch_size(batch_size)
    name = session.get_inputs()[0].name
    out_name = session.get_outputs()[output].name
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        chunks.append(session.run([out_name], {name: batch})[0])
        if on_batch is not None:
            on_batch(batch.shape[0])
    if not chunks:
        return np.empty((0,), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def session_device(session: ort.InferenceSession) -> torch.device:
    """Where a session's inputs and outputs live for IO binding: its GPU, or the CPU."""
    if session_provider(session) == "cuda" and torch.cuda.is_available():
        device_id = int(session.get_provider_options().get(CUDA_EP, {}).get("device_id", 0))
        return torch.device("cuda", device_id)
    return torch.device("cpu")


def run_bound(
    session: ort.InferenceSession,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    static: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``session`` over ``images`` through IO binding on the session's device (see the module docstring).

    ``images`` may already be on that device (pass the same tensor to several sessions and
    it is copied there once). ``static=True`` runs every batch at exactly ``batch_size``
    rows from one input and one output buffer (the last batch padded), as an onnxruntime
    CUDA graph needs. Returns the first output, ``float32 (N, classes)``, on the host.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    check_input_dtype(session, _np(images.dtype))
    _check_batch_size(batch_size)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    classes = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
    device = session_device(session)
    if classes is None or (session_provider(session) == "cuda" and device.type != "cuda"):
        return run_batched(session, images, batch_size=batch_size, on_batch=on_batch)  # no torch CUDA to bind to
    x = images.to(device).contiguous()  # once; a no-op when it is there already
    n = int(x.shape[0])
    result = torch.empty((n, classes), dtype=torch.float32, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copy ran on torch's stream; onnxruntime uses its own
    kind, index = device.type, device.index or 0
    binding = session.io_binding()

    def bind(batch: torch.Tensor, logits: torch.Tensor) -> None:
        binding.bind_input(inp.name, kind, index, _np(x.dtype), list(batch.shape), batch.data_ptr())
        binding.bind_output(out.name, kind, index, np.float32, list(logits.shape), logits.data_ptr())

    if static:  # one input and one output buffer for every batch
        x_static = torch.zeros((batch_size, *x.shape[1:]), dtype=x.dtype, device=device)
        y_static = torch.empty((batch_size, classes), dtype=torch.float32, device=device)
        bind(x_static, y_static)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if static:
            x_static[: stop - start].copy_(x[start:stop])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            session.run_with_iobinding(binding)
            result[start:stop].copy_(y_static[: stop - start])
        else:
            bind(x[start:stop], result[start:stop])  # straight into the result: no copy at all
            session.run_with_iobinding(binding)
        if on_batch is not None:
            on_batch(stop - start)
    return result.cpu().numpy()


def _np(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


_NP_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
}
