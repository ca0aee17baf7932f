"""One process per run folder: the second one is refused at once, naming the first; no stale locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bandistill.lock import FOLDER_LOCK, lock_path_for_file
from conftest import assert_one_line_error, run_cli

HOLD = textwrap.dedent("""
    import sys, time
    from bandistill.lock import {kind}
    with {kind}(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(600)
""")


def hold_in_another_process(kind: str, target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(kind=kind), str(target)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("command", ["train", "ban"])
def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(tmp_path, command):
    out = tmp_path / "run"
    holder = hold_in_another_process("folder_lock", out)
    try:
        args = ["--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--out", out]
        if command == "ban":
            args += ["--generations", "1", "--views", "1"]
        err = assert_one_line_error(run_cli(command, *args), "in use by another bandistill process",
                                    f"pid {holder.pid}")
        assert "started" in err
        assert sorted(p.name for p in out.iterdir()) == [FOLDER_LOCK]  # it did nothing
    finally:
        holder.kill()
        holder.wait()
    # killed holder, no stale lock: the same command now runs
    if command == "train":
        assert run_cli(command, *args).exit_code == 0


def test_a_second_dump_of_one_cache_is_refused(digits_teacher, tmp_path):
    out = tmp_path / "cache" / "gen0.h5"
    holder = hold_in_another_process("file_lock", out)
    try:
        result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 1,
                         "--out", out)
        assert_one_line_error(result, "in use by another bandistill process", f"pid {holder.pid}")
        assert not out.exists() and lock_path_for_file(out).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 1, "--out", out)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_two_ban_processes_on_one_folder_exactly_one_runs(tmp_path):
    """Both used to train gen0 in the same folder (metrics.jsonl ended with 4 records for 2 epochs)."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "bandistill.cli.main", "ban", "--model", "resnet-20", "--dataset", "digits",
           "--generations", "1", "--views", "1", "--epochs", "2", "--batch-size", "256", "--device", "cpu",
           "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(2)]
    loser = None
    while loser is None:  # the refused one ends while the other is still working
        done = [p for p in procs if p.poll() is not None]
        if done:
            loser = done[0]
            assert all(p.poll() is None for p in procs if p is not loser), "both finished: neither was refused?"
        time.sleep(0.05)
    winner = next(p for p in procs if p is not loser)
    err = loser.stderr.read()
    assert loser.returncode == 2 and "in use by another bandistill process" in err and f"pid {winner.pid}" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert winner.wait() == 0, winner.stderr.read()
    lines = (out / "gen0" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_a_holder_that_has_not_yet_written_its_name_is_still_named(tmp_path):
    """The holder writes its line just after taking the lock; a second process that looked in between said
    "a process that is starting" (seen as a flaky two-process test in CI)."""
    import fcntl
    import os
    import threading

    from bandistill.errors import UserError
    from bandistill.lock import hold

    lock = tmp_path / ".bandistill.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, not yet named
        timer = threading.Timer(0.2, lambda: os.pwrite(fd, b"pid 4242 on host: bandistill ban", 0))
        timer.start()
        with pytest.raises(UserError, match="pid 4242"):
            with hold(lock, "exp"):
                pass
        timer.join()
    finally:
        os.close(fd)
