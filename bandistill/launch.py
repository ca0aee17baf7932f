"""Running one stage of ``bandistill ban`` under torchrun, and the worker torchrun starts for it.

``bandistill ban --nproc-per-node N`` runs its training and dump stages as
``python -m torch.distributed.run --standalone --nproc-per-node N -m bandistill.launch SPEC``:
PyTorch's own launcher, not a pool of ours. ``SPEC`` is a JSON file naming the library
function (``train`` or ``dump``) and its arguments, so nothing is lost translating options
into a command line; rank 0 writes the function's result beside it, and that is what the
stage returns. Every other stage (export, evaluation, the ensemble) stays in one process.

A rank's error is written, as one line, to ``$BANDISTILL_ERROR_FILE``; after torchrun's own
failure report the launcher raises it again: a user error as a :class:`UserError` (``ban``
ends with that line and exit code 2), anything else (a diverged loss, a bug, a rank killed
without a word) as :class:`~bandistill.errors.StageFailed` naming the stage and the rank
(one line, exit code 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

from bandistill import distributed
from bandistill.errors import StageFailed, UserError, VerificationError

STAGES = ("train", "dump")


def _call(stage: str, kwargs: dict[str, Any], *, progress: bool, log: Callable[[str], None] | None) -> Any:
    """The library function of ``stage``, called in this process."""
    if stage == "train":
        from bandistill.train import TrainConfig, train

        return train(TrainConfig.from_dict(kwargs["config"]), kwargs["out"], resume=kwargs.get("resume", False),
                     progress=progress)
    if stage == "dump":
        from bandistill.dump import dump_logits

        args = dict(kwargs)
        return dump_logits(args.pop("checkpoint"), args.pop("dataset"), args.pop("out"), progress=progress, log=log,
                           **args)
    raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


def run_stage(stage: str, kwargs: dict[str, Any], nproc_per_node: int = 1, *, progress: bool = True,
              log: Callable[[str], None] | None = None) -> Any:
    """Run ``stage`` with JSON-able ``kwargs``: in this process, or under torchrun on ``nproc_per_node`` processes."""
    if nproc_per_node <= 1:
        return _call(stage, kwargs, progress=progress, log=log)
    with tempfile.TemporaryDirectory(prefix="bandistill-launch-") as tmp:
        spec, result, errors = Path(tmp) / "spec.json", Path(tmp) / "result.json", Path(tmp) / "errors.txt"
        spec.write_text(json.dumps({"stage": stage, "kwargs": kwargs, "progress": progress, "result": str(result)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
               "-m", "bandistill.launch", str(spec)]
        env = {**os.environ, distributed.ERROR_FILE_ENV: str(errors)}
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for several processes per node
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:
            _raise_rank_error(stage, nproc_per_node, code, errors)
        return json.loads(result.read_text())


def _raise_rank_error(stage: str, nproc: int, code: int, errors: Path) -> None:
    """Raise the first error a rank reported: the user's as :class:`UserError`, any other as :class:`StageFailed`."""
    records = []
    for text in (errors.read_text().splitlines() if errors.exists() else []):
        with contextlib.suppress(ValueError):
            records.append(json.loads(text))
    user = [r for r in records if r.get("kind") == "error"]
    if user:
        r = user[0]
        raise UserError(r["line"] if r.get("rank", 0) == 0 else f"rank {r['rank']}: {r['line']}")
    if records:
        r = records[0]
        raise StageFailed(f"the {stage} stage failed on rank {r.get('rank')} of {nproc} under torchrun: {r['line']}")
    raise StageFailed(f"the {stage} stage failed under torchrun (exit code {code}) and no rank reported why (killed: "
                      "out of memory, a signal?); see torchrun's report above")


def worker(spec_path: str) -> int:
    """What each rank runs: the stage's function; rank 0 writes its result for the launcher."""
    spec = json.loads(Path(spec_path).read_text())
    main = distributed.is_main()
    try:
        result = _call(spec["stage"], spec["kwargs"], progress=spec["progress"] and main,
                       log=(lambda msg: print(msg, file=sys.stderr)) if main else None)
    except UserError as exc:
        line = distributed.error_line(exc)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except Exception as exc:  # not the user's: the launcher names this rank and the stage, exit 1
        line = str(exc)
        if not isinstance(exc, VerificationError):  # a bug or the environment: its traceback helps
            traceback.print_exc()
            line = f"{type(exc).__name__}: {exc}"
        print(f"failed: rank {distributed.world().rank}: {line}", file=sys.stderr)
        distributed.report_to_launcher("failed", line)
        return 1
    finally:
        distributed.stop()
    if main:
        from bandistill.atomic import atomic_write

        atomic_write(spec["result"], lambda tmp: Path(tmp).write_text(json.dumps(result, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
