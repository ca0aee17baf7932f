"""onnxruntime providers and IO binding: the choice, why CUDA cannot load, which provider really ran.

The GPU path itself needs a GPU (tests that only make sense there are skipped without one);
everything else runs here: the choice, the one-line refusal naming the missing library and
its package (asked of the real dynamic loader), and IO binding on the CPU provider, which
must give exactly what ``session.run`` gives.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bandistill.errors import UserError
from bandistill.onnx.providers import (
    CPU_EP, CUDA_EP, cuda_problem, library_package, library_source, resolve_providers,
)
from bandistill.onnx.runtime import create_session, run_batched, run_bound, session_provider
from conftest import assert_one_line_error, run_cli

NO_CUDA = cuda_problem() is not None


@pytest.fixture(scope="module")
def gen0_onnx(digits_teacher, digits, tmp_path_factory):
    from bandistill.onnx.export import export_checkpoint

    out = tmp_path_factory.mktemp("providers") / "gen0.onnx"
    export_checkpoint(digits_teacher, out, dataset=digits)
    return out


def test_provider_choice() -> None:
    assert resolve_providers("cpu") == [CPU_EP]
    with pytest.raises(UserError, match="unknown --provider 'tpu'"):
        resolve_providers("tpu")
    if NO_CUDA:
        assert resolve_providers("auto") == [CPU_EP]  # silently the CPU: nothing was asked of CUDA
        with pytest.raises(UserError, match="--cuda-graph needs onnxruntime on a CUDA GPU"):
            resolve_providers("auto", cuda_graph=True)
    else:
        assert resolve_providers("auto")[0] == CUDA_EP
        assert resolve_providers("cuda", cuda_graph=True)[0] == (CUDA_EP, {"enable_cuda_graph": "1"})
    with pytest.raises(UserError, match="--cuda-graph"):
        resolve_providers("cpu", cuda_graph=True)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine where onnxruntime cannot run on CUDA")
def test_provider_cuda_refuses_with_the_reason(gen0_onnx) -> None:
    with pytest.raises(UserError) as info:
        create_session(gen0_onnx, "cuda")  # never a session quietly on the CPU
    message = str(info.value)
    assert message.startswith("--provider cuda: ") and cuda_problem() in message
    assert message.endswith("use --provider cpu or auto") and "\n" not in message


@pytest.mark.parametrize(("library", "major", "package"), [
    ("libcublasLt.so.13", 13, "nvidia-cublas"),
    ("libcublas.so.13", 13, "nvidia-cublas"),
    ("libcudart.so.13", 13, "nvidia-cuda-runtime"),
    ("libcurand.so.10", 13, "nvidia-curand"),
    ("libcudnn.so.9", 13, "nvidia-cudnn-cu13"),
    ("libcublasLt.so.12", 12, "nvidia-cublas-cu12"),
    ("libcuda.so.1", 13, None),
])
def test_which_package_provides_a_library(library, major, package) -> None:
    assert library_package(library, major) == package
    if package is None:
        assert "NVIDIA driver" in library_source(library)


_NO_PRELOAD = """
import sys
from bandistill.onnx.providers import cuda_problem, missing_cuda_library, preload_cuda_libraries
before = missing_cuda_library()
problem = cuda_problem(preload=False)
preload_cuda_libraries()
print(repr((before, problem, missing_cuda_library(), "torch" in sys.modules)))
"""


@pytest.mark.skipif(CUDA_EP not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_the_missing_library_is_named_with_its_package(tmp_path) -> None:
    """A fresh process, torch not imported, nothing preloaded: the real loader names what is missing."""
    import ast

    proc = subprocess.run([sys.executable, "-c", _NO_PRELOAD], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before, problem, after, torch_loaded = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert not torch_loaded
    if before is None:
        pytest.skip("the CUDA provider's libraries load here without preloading")
    assert f"cannot load {before}: " in problem and library_source(before) in problem
    if before.startswith("libcublas"):  # onnxruntime-gpu beside torch's pip wheels, as on CI
        assert "pip install nvidia-cublas" in problem
    if hasattr(ort, "preload_dlls") and before.startswith("libcublas"):
        # onnxruntime.preload_dlls() finds torch's nvidia-* wheels: cuBLAS is no longer what is missing
        assert after is None or not after.startswith("libcublas"), after


def test_io_binding_on_the_cpu_gives_what_run_gives(gen0_onnx, digits) -> None:
    session = create_session(gen0_onnx, "cpu")
    assert session_provider(session) == "cpu" and session.get_providers() == [CPU_EP]
    images = digits.test_images  # 359 images: 61 does not divide it, the last batch is short
    plain = run_batched(session, images, batch_size=61)
    for static in (False, True):
        seen = []
        bound = run_bound(session, images, batch_size=61, static=static, on_batch=seen.append)
        np.testing.assert_array_equal(bound, plain)
        assert sum(seen) == images.shape[0] and max(seen) == 61
    np.testing.assert_array_equal(run_bound(session, images.numpy(), batch_size=500), plain)  # NumPy in, one batch
    with pytest.raises(UserError, match="nothing is cast"):
        run_bound(session, images.float())


def test_the_report_says_which_provider_ran_each_session(gen0_onnx, tmp_path) -> None:
    import onnx

    gen1 = tmp_path / "gen1.onnx"  # a second member (an identical copy would be refused as one model twice)
    proto = onnx.load(gen0_onnx)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "second member"})
    onnx.save(proto, gen1)
    res = run_cli("ensemble", "--onnx", gen0_onnx, gen1, "--provider", "cpu", "--allow-mixed", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [m["provider"] for m in data["members"]] == ["cpu", "cpu"] and data["provider"] == "cpu"
    table = run_cli("ensemble", "--onnx", gen0_onnx, gen1, "--provider", "cpu")
    assert table.exit_code == 0 and "ran on" in table.output and "onnxruntime on cpu" in table.output


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine where onnxruntime cannot run on CUDA")
def test_provider_cuda_on_the_command_line_is_one_line(gen0_onnx) -> None:
    err = assert_one_line_error(run_cli("ensemble", "--onnx", gen0_onnx, "--provider", "cuda"), "--provider cuda: ")
    assert cuda_problem() in err
    assert_one_line_error(run_cli("ensemble", "--onnx", gen0_onnx, "--cuda-graph"), "--cuda-graph")


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA or not torch.cuda.is_available(), reason="needs onnxruntime on a CUDA GPU")
def test_on_a_gpu_cuda_sessions_run_bound_on_the_device(gen0_onnx, digits) -> None:
    session = create_session(gen0_onnx, "cuda")
    assert session.get_providers()[0] == CUDA_EP and session_provider(session) == "cuda"
    reference = run_batched(create_session(gen0_onnx, "cpu"), digits.test_images, batch_size=64)
    on_gpu = digits.test_images.cuda()
    np.testing.assert_allclose(run_bound(session, on_gpu, batch_size=64), reference, atol=1e-3)
    graph = create_session(gen0_onnx, "cuda", cuda_graph=True)
    np.testing.assert_allclose(run_bound(graph, on_gpu, batch_size=64, static=True), reference, atol=1e-3)
