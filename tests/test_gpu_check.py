"""benchmarks/gpu_check.py --smoke: every GPU check at toy sizes on the CPU, from the checkout, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
RAN = {"holds", "falls short", "measured"}


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_check_and_reports_each_as_a_row(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "check.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| what | figure | target | verdict |" in res.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    by: dict[str, list[dict]] = {}
    for r in report["rows"]:
        by.setdefault(r["check"], []).append(r)
    assert list(by) == ["env", "gpu_tests", "train_throughput:resnet-20", "train_throughput:densenet-bc-100-12",
                        "train_throughput:wrn-28-10", "step_cost", "dump_throughput", "ban", "ensemble_throughput",
                        "stream_ban", "stream_throughput"]
    # the package came from this checkout, arranged by the script (cli/ and cache/ inside), not an install
    (env_row,) = by["env"]
    assert env_row["verdict"] == "holds" and "from the checkout (arranged)" in env_row["figure"], env_row
    # GPU-only tests are found and, on the CPU, reported as not run with pytest's reason
    names = [r["what"] for r in by["gpu_tests"]]
    assert any("test_capture_waits_for_the_checkpoint_writer" in n for n in names), names
    assert any("test_the_captured_step_trains_as_well_as_the_eager_one" in n for n in names), names
    for r in by["gpu_tests"]:
        assert r["verdict"] in RAN | {"could not run (needs a GPU)", "could not run (needs onnxruntime on a CUDA GPU)"}, r
    # every benchmark and the end-to-end chain ran and gave a figure against its target
    for check in ("train_throughput:resnet-20", "train_throughput:densenet-bc-100-12", "train_throughput:wrn-28-10",
                  "step_cost", "dump_throughput", "ban", "stream_ban", "stream_throughput"):
        for r in by[check]:
            assert r["verdict"] in RAN and r["figure"], r
    assert by["ban"][0]["verdict"] == by["stream_ban"][0]["verdict"] == "holds"
    merged, graph = by["ensemble_throughput"]
    assert merged["verdict"] in RAN and "PyTorch" in merged["figure"], merged
    assert graph["verdict"].startswith("could not run") and "CUDA" in graph["verdict"], graph
    assert (tmp_path / "check_logs" / "ban.log").exists()


@pytest.mark.slow
def test_a_second_run_moves_the_first_report_and_logs_aside(tmp_path):
    """GPU time is rare: the same --out again keeps the earlier report and its logs (renamed with their time)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--only", "none", "--out", str(tmp_path / "check.json")]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "check.json").write_text((tmp_path / "check.json").read_text().replace('"smoke"', '"first"', 1))
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    reports = sorted(tmp_path.glob("check.*.json"))
    assert len(reports) == 1 and '"first"' in reports[0].read_text(), [p.name for p in tmp_path.iterdir()]
    assert '"first"' not in (tmp_path / "check.json").read_text()
    (old_logs,) = tmp_path.glob("check_logs.*")
    assert (old_logs / "env.log").exists() and (tmp_path / "check_logs" / "env.log").exists()
