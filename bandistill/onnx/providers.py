"""Which onnxruntime execution provider runs a session -- CUDA or CPU -- and why CUDA cannot when it cannot.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as *available* on any machine, GPU or
not. Asking for it where its libraries do not load makes onnxruntime log a red error and
quietly run on the CPU instead -- even when CUDA is the only provider asked for. So:

1. :func:`preload_cuda_libraries` first calls ``onnxruntime.preload_dlls()`` (onnxruntime
   1.21+), which loads the CUDA and cuDNN libraries of the ``nvidia-*`` wheels (the ones
   torch's CUDA builds install) whatever the import order; older onnxruntime gets them
   through ``import torch``, which loads them.
2. A tiny probe session (logging muted) shows whether the CUDA provider really starts.
3. When it does not, :func:`cuda_problem` says why in one sentence: the library the dynamic
   loader cannot find (e.g. ``libcublasLt.so.13``) and the pip package that provides it
   (``nvidia-cublas``), no GPU, or a version mismatch.

``auto`` then picks CUDA only where the probe got it, and the CPU without a word
elsewhere; ``cuda`` where CUDA cannot run is a :class:`UserError` naming the cause. After
every session is made, :mod:`bandistill.onnx.runtime` checks the providers it really got
(``session.get_providers()``): ``--provider cuda`` never falls back silently.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import re
import sys
from typing import Any

import onnxruntime as ort

from bandistill.errors import UserError

PROVIDERS = ("auto", "cuda", "cpu")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: Library name prefix -> the pip package that ships it (CUDA 13 names; CUDA 12 adds "-cu12").
_PACKAGES = (
    ("libcublasLt", "nvidia-cublas"), ("libcublas", "nvidia-cublas"), ("libcudart", "nvidia-cuda-runtime"),
    ("libcurand", "nvidia-curand"), ("libcufft", "nvidia-cufft"), ("libnvrtc", "nvidia-cuda-nvrtc"),
    ("libnvJitLink", "nvidia-nvjitlink"), ("libcudnn", "nvidia-cudnn"),
)


def ort_cuda_major() -> int | None:
    """The CUDA major version this onnxruntime-gpu was built for (13 for 1.31.1), or None."""
    version = getattr(ort, "cuda_version", "") or ""
    return int(version.split(".")[0]) if version.split(".")[0].isdigit() else None


def library_package(library: str, cuda_major: int | None = None) -> str | None:
    """The pip package that ships a library the CUDA provider needs (``libcublasLt.so.13`` -> ``nvidia-cublas``)."""
    major = cuda_major or ort_cuda_major() or 13
    for prefix, package in _PACKAGES:
        if library.startswith(prefix + "."):
            # CUDA 12's wheels are nvidia-cublas-cu12 ...; CUDA 13's drop the suffix, except cuDNN's
            return package + (f"-cu{major}" if major < 13 or package == "nvidia-cudnn" else "")
    return None


def library_source(library: str) -> str:
    """Where a missing library comes from, as the end of a sentence."""
    if library.startswith("libcuda.so"):
        return "the NVIDIA driver provides it (not a pip package; a machine without an NVIDIA GPU has none)"
    package = library_package(library)
    if package is None:
        return "the CUDA toolkit provides it (see onnxruntime's CUDA requirements page)"
    return f"the pip package {package} provides it (pip install {package})"


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> str:
    """Load the ``nvidia-*`` wheels' CUDA/cuDNN libraries for onnxruntime; what it said (it prints)."""
    if not hasattr(ort, "preload_dlls"):
        import torch  # noqa: F401  (torch's CUDA build loads the same libraries)

        return ""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # preload_dlls prints; stdout is --json's
        try:
            ort.preload_dlls()
        except Exception as exc:  # a broken install is diagnosed below, never a crash here
            print(f"preload_dlls failed: {exc}")
    return said.getvalue()


def cuda_provider_library() -> str | None:
    """The path of onnxruntime's CUDA provider library, where this build has one."""
    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    path = os.path.join(os.path.dirname(ort.__file__), "capi", name)
    return path if os.path.isfile(path) else None


def missing_cuda_library() -> str | None:
    """The first library the CUDA provider needs that the dynamic loader cannot find here, or None.

    Asked of the loader itself (loading the provider library as onnxruntime would); only a
    "cannot open shared object file" answer counts, so a working install never reports one.
    """
    path = cuda_provider_library()
    if path is None or sys.platform == "win32":
        return None
    try:
        ctypes.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    except OSError as exc:
        found = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", str(exc))
        return found.group(1) if found else None
    return None


def _probe_model() -> bytes:
    """A one-node float model, serialised, to see which providers a session really gets."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _probe_gets_cuda() -> bool:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)  # a failed CUDA load logs on the default logger
    try:
        session = ort.InferenceSession(_probe_model(), options, providers=[CUDA_EP, CPU_EP])
        return session.get_providers()[0] == CUDA_EP
    except Exception:  # a broken CUDA install: diagnosed by the caller, never a crash here
        return False
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)


@functools.lru_cache(maxsize=2)
def cuda_problem(preload: bool = True) -> str | None:
    """None when onnxruntime runs on a CUDA GPU in this process; else one sentence saying why not."""
    if CUDA_EP not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA execution provider; pip install onnxruntime-gpu"
    if preload:
        preload_cuda_libraries()
    if _probe_gets_cuda():
        return None
    library = missing_cuda_library()
    if library is not None:
        return f"onnxruntime {ort.__version__}'s CUDA provider cannot load {library}: {library_source(library)}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is usable on this machine (torch.cuda.is_available() is False)"
    return (f"onnxruntime {ort.__version__} (built for CUDA {getattr(ort, 'cuda_version', '?')}) fell back to the CPU "
            "although a GPU is usable: a CUDA or cuDNN version mismatch? "
            "python -c 'import onnxruntime; onnxruntime.print_debug_info()' lists what it found")


def resolve_providers(provider: str = "auto", *, cuda_graph: bool = False) -> list[Any]:
    """The execution-provider list for a session: ``auto`` / ``cuda`` / ``cpu``.

    ``cuda`` keeps the CPU provider after it for nodes CUDA does not implement (where they
    run is checked per session). ``cuda_graph`` asks the CUDA provider to capture the graph
    (fixed shapes only; see :func:`bandistill.onnx.runtime.run_bound`). Raises
    :class:`UserError` for ``cuda`` where CUDA cannot run (saying why), or an unknown name.
    """
    key = (provider or "auto").lower()
    if key not in PROVIDERS:
        raise UserError(f"unknown --provider '{provider}': use auto, cuda or cpu")
    problem = None if key == "cpu" else cuda_problem()
    if key == "cuda" and problem is not None:
        raise UserError(f"--provider cuda: {problem}; use --provider cpu or auto")
    if key == "cpu" or problem is not None:
        if cuda_graph:
            raise UserError("--cuda-graph needs onnxruntime on a CUDA GPU, and this run is on the CPU; leave it out")
        return [CPU_EP]
    return [(CUDA_EP, {"enable_cuda_graph": "1"}) if cuda_graph else CUDA_EP, CPU_EP]


def provider_name(providers: list[Any]) -> str:
    """``cuda`` or ``cpu``: the provider a session (or a provider list) runs on first."""
    first = providers[0] if providers else CPU_EP
    return "cuda" if (first[0] if isinstance(first, tuple) else first) == CUDA_EP else "cpu"
