"""Smoke runs of the benchmark scripts with tiny step counts (they must keep working; no timing is checked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_runs_on_the_cpu_with_tiny_counts(capsys):
    bench = _load("train_throughput")
    result = bench.main(["--models", "resnet-8", "--batch-size", "4", "--steps", "1", "--rounds", "1",
                         "--device", "cpu", "--json"])
    assert '"bandistill_over_stock"' in capsys.readouterr().out
    (row,) = result["models"]
    assert row["model"] == "resnet-8" and row["compile"] == "none" and result["peak_dtype"] == "fp32"
    assert set(row["images_per_s"]) == {"bandistill", "stock", "pre_split"}
    assert all(v > 0 for v in row["images_per_s"].values()) and row["train_gflops_per_image"] > 0
    assert all(0 < v for v in row["mfu"].values())


def test_dump_throughput_runs_on_the_cpu_with_tiny_counts():
    result = _load("dump_throughput").main(["--model", "resnet-8", "--views", "1", "--rounds", "1",
                                             "--device", "cpu", "--json"])
    assert result["dataset"] == "digits" and result["views"] == 1
    assert result["images_per_s"]["dump"] > 0 and result["dump_over_inference"] > 0


def test_data_throughput_runs_on_a_tiny_jpeg_tree(tmp_path):
    from test_stream import write_jpeg_tree

    tree = write_jpeg_tree(tmp_path / "photos", per_class=6)
    result = _load("data_throughput").main(["--data-dir", str(tree), "--image-size", "16", "--workers", "1",
                                             "--batch-size", "4", "--batches", "1", "--copies", "2", "--rounds", "1",
                                             "--json"])
    (row,) = result["trees"]
    assert row["train_images"] == 36 and row["stream"]["images_per_s"] > 0 and row["stock"]["images_per_s"] > 0
    assert row["stream_over_stock"] > 0 and result["decoder"]["ms_per_image"]["pillow"] > 0


def test_imagenet_cache_read_runs_with_a_small_file(tmp_path):
    result = _load("imagenet_cache_read").main(["--views", "2", "--samples", "1000", "--reads", "1",
                                                 "--dir", str(tmp_path), "--json"])
    assert result["epoch_read_bytes"] == 1000 * 32 and len(result["cold_read_s"]) == 1
    assert result["on_paper"]["top5"]["logits"] == 1_281_167 * 22


def test_rerun_planning_runs_with_a_tiny_cache(tmp_path):
    result = _load("rerun_planning").main(["--gb", "0.001", "--repeats", "1", "--dir", str(tmp_path), "--json"])
    assert result["bytes"] > 0 and set(result["seconds"]) == {"remembered", "rehash"}
