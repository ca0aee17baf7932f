"""A full disk is one line and exit 2, with the work saved so far kept; never a traceback or a crash.

Two honest ways to run out of space: a small tmpfs (needs root to mount; skipped otherwise), and
a file size limit (RLIMIT_FSIZE, any user) in a subprocess, where a write past the limit fails
with EFBIG just as a full disk fails with ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bandistill.dump import LogitDump
from conftest import assert_one_line_error, run_cli

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path):
    """``mount(bytes) -> folder``: a tmpfs of that size under tmp_path, unmounted afterwards."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


LIMITED = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from bandistill.cli.main import cli
    cli(sys.argv[2:], prog_name="bandistill")
""")


def run_with_file_limit(limit: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_train_on_a_full_disk_is_one_line(small_disk):
    """torch.save raised RuntimeError ('file write failed'): exit 1 and a traceback."""
    out = small_disk(64 * PAGE) / "run"  # a resnet-20 checkpoint is ~1 MB
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--out", out)
    assert_one_line_error(result, "no space left writing", "last.pt", "run the same command with --resume")
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # the half-written temp file is gone


def test_train_stopped_by_a_full_disk_after_an_epoch_continues_as_its_line_says(small_disk):
    """The line said "run the same command again: it resumes"; that command refused ("pass --resume")."""
    disk = small_disk(2_000_000)
    filler = disk / "filler"
    filler.write_bytes(b"x" * 800_000)  # what the user frees afterwards
    out = disk / "run"
    args = ["train", "--model", "resnet-8", "--dataset", "digits", "--epochs", "2", "--batch-size", "512",
            "--device", "cpu", "--out", out]
    result = run_cli(*args)  # epoch 1's last.pt (~0.65 MB) fits, epoch 2's does not
    assert_one_line_error(result, "no space left writing", "run the same command with --resume")
    assert (out / "last.pt").exists()
    filler.unlink()
    assert run_cli(*args, "--resume").exit_code == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_train_past_the_file_size_limit_is_one_line(tmp_path):
    """The line said "run the same command again: it resumes", but a plain train then asked for --resume."""
    out = tmp_path / "run"
    args = ["train", "--model", "resnet-8", "--dataset", "digits", "--epochs", "2", "--batch-size", "512",
            "--device", "cpu", "--out", out]
    proc = run_with_file_limit(400_000, *args)  # a resnet-8 last.pt is ~0.35 MB, model.pt (no momenta) less
    one_line(proc, "no space left writing", "run the same command with --resume")
    assert "last.pt" in proc.stderr or "model.pt" in proc.stderr
    assert run_cli(*args, "--resume").exit_code == 0  # what the line says works


def test_dump_preflight_counts_the_hdf5_overhead(digits_teacher, small_disk, tmp_path):
    """A disk that held the arrays but not HDF5's own bytes passed the preflight, then crashed mid-dump."""
    probe = LogitDump(digits_teacher, "digits", tmp_path / "probe.h5", views=20, device="cpu", progress=False)
    e = probe.estimate
    arrays_only = e["total"] - e["hdf5_overhead"]
    size = -(-(arrays_only + 1) // PAGE) * PAGE
    if size >= e["total"]:
        pytest.skip("the overhead is smaller than a page here")
    out = small_disk(size) / "gen0.h5"
    result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 20,
                     "--out", out)
    assert_one_line_error(result, "the cache needs", "free; free space or use fewer --views")
    assert "--dtype float16" not in result.stderr  # it is float16 already
    roomy = small_disk(e["total"] + PAGE) / "gen0.h5"
    result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 20,
                     "--out", roomy, "--json")
    assert result.exit_code == 0, result.output
    assert roomy.stat().st_size <= e["total"]


def test_dump_past_the_file_size_limit_is_one_line_and_resumable(digits_teacher, tmp_path):
    """h5py used to print tracebacks (or crash the process) when a write failed mid-dump. The whole file
    is now reserved before the first view is written, so running out of room stops the dump there, cleanly."""
    out = tmp_path / "gen0.h5"
    args = ["dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 8,
            "--device", "cpu", "--out", out]
    one_line(run_with_file_limit(200_000, *args), "no space left writing", "gen0.h5.partial")
    assert not out.exists()
    assert run_cli(*args).exit_code == 0


def test_a_reserved_dump_finishes_on_a_disk_that_filled_up_meanwhile(digits_teacher, small_disk):
    """Interrupted after 3 views, then another program fills the disk: the rest still fits, because the
    dump reserved its whole file before writing its first view."""
    import json

    from bandistill.dump import DumpInterrupted, dump_logits

    disk = small_disk(160 * PAGE)
    out = disk / "gen0.h5"
    with pytest.raises(DumpInterrupted):
        dump_logits(digits_teacher, "digits", out, views=8, device="cpu", progress=False, stop_after_views=3)
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # take every byte that is left
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError:
            pass
    assert os.statvfs(disk).f_bavail == 0
    result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 8,
                     "--device", "cpu", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["views_resumed"], summary["views_written"]) == (3, 5)
