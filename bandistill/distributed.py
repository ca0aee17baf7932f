"""Running under torchrun: one process per device, and the rules every distributed stage keeps.

``torchrun --nproc-per-node N -m bandistill train ...`` (that is ``python -m
torch.distributed.run``) starts N copies of the command and tells each its place through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).
This module reads them, joins the process group (NCCL on CUDA, gloo on CPU) and keeps the
bookkeeping out of the stages themselves:

* rank 0 alone prints, shows progress and writes shared files (checkpoints, metrics, the
  merged cache); :func:`is_main` says which rank this is even before the group exists;
* a user error found on any rank inside :func:`agreement` stops every rank: rank 0 prints
  it as one line, the others exit 2 without printing (:class:`ReportedByRank0`);
* without torchrun's variables the world has one process and no process group is made,
  so everything runs exactly as it does without torchrun.

Control messages (errors, "my shard is done") travel on a second, gloo group with a long
timeout: a rank may wait there for hours for a slower shard, which NCCL's default
10-minute watchdog would not allow. The training's gradients use the default group.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from bandistill.errors import UserError

#: How long a rank waits for the others at a control point (a shard finishing, a merge).
CONTROL_TIMEOUT = timedelta(hours=12)

_control_group = None

#: Where a rank records its one-line user error for the launcher (see :mod:`bandistill.launch`).
ERROR_FILE_ENV = "BANDISTILL_ERROR_FILE"


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """Read from torchrun's environment variables (world size 1 without them)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World(0, 1, 0)
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE or LOCAL_RANK is not an integer; launch with torchrun, "
                        "or unset them to run in one process") from None


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes."""
    return world().is_main


def is_distributed() -> bool:
    return world().size > 1


def backend_for(device_name: str) -> str:
    """NCCL when this rank will compute on a GPU, gloo otherwise (CPU ranks, ``--device cpu``)."""
    wants_cpu = (device_name or "auto").lower() == "cpu"
    return "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"


def start(device_name: str = "auto") -> World:
    """Join torchrun's process group, once per process; a no-op in a single process.

    A CUDA rank is pinned to GPU ``LOCAL_RANK`` (see :func:`bandistill.device.resolve_device`).
    """
    global _control_group
    w = world()
    if w.size == 1 or dist.is_initialized():
        return w
    backend = backend_for(device_name)
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend)
    _control_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return w


def stop() -> None:
    """Leave the process group (every rank at the end of a distributed command)."""
    global _control_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


class ReportedByRank0(UserError):
    """A user error another rank found; rank 0 prints it, this rank exits 2 silently."""


@contextlib.contextmanager
def agreement() -> Iterator[None]:
    """Run a block on every rank, then stop all of them if any raised a :class:`UserError`.

    Every rank must enter the block (it ends in a collective). Rank 0 raises the first
    rank's error as a plain :class:`UserError`, so it prints one line; the other ranks
    raise :class:`ReportedByRank0`. It is also the barrier of a control point.
    """
    if not dist.is_initialized():
        yield
        return
    message = None
    try:
        yield
    except UserError as exc:
        message = str(exc)
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, message, group=_control_group)
    failed = [(rank, err) for rank, err in enumerate(errors) if err is not None]
    if failed:
        rank, err = failed[0]
        where = "" if rank == 0 or dist.get_world_size() == 1 else f"rank {rank}: "
        raise (UserError if is_main() else ReportedByRank0)(f"{where}{err}")


def barrier() -> None:
    """Wait for every rank (on the control group, so a long wait does not trip NCCL's watchdog)."""
    if dist.is_initialized():
        dist.barrier(group=_control_group)


def error_line(exc: UserError) -> str | None:
    """What this rank prints for a user error: rank 0 everything, other ranks only their own errors.

    Under :mod:`bandistill.launch` the line is also appended to ``$BANDISTILL_ERROR_FILE``,
    so the launcher can repeat it as its own one-line error after torchrun's report.
    """
    w = world()
    if isinstance(exc, ReportedByRank0):
        return None
    line = str(exc) if w.size == 1 or w.is_main else f"rank {w.rank}: {exc}"
    report_to_launcher("error", str(exc))
    return line


def report_to_launcher(kind: str, message: str) -> None:
    """Append this rank's one-line ``kind`` (``error``: the user's; ``failed``: anything else) to
    ``$BANDISTILL_ERROR_FILE`` as a JSON line, for :mod:`bandistill.launch`; a no-op elsewhere."""
    w, path = world(), os.environ.get(ERROR_FILE_ENV)
    if path and w.size > 1:
        record = {"kind": kind, "rank": w.rank, "line": " ".join(str(message).split())}
        with contextlib.suppress(OSError), open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


# -- data-parallel training ---------------------------------------------------------------
def wrap_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel when several ranks train it, else ``model`` itself.

    DDP averages gradients across ranks and, before every forward, copies rank 0's buffers
    (BatchNorm running statistics) to the others, so every rank holds rank 0's model.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


#: This rank's rows ``(start, stop, total)`` of the global batch of the current step (None in one process).
_batch_rows: tuple[int, int, int] | None = None


def rank_slice(idx: torch.Tensor) -> torch.Tensor:
    """The rows of global batch ``idx`` this rank trains (what :func:`local_batch` returns; no side effects)."""
    w = world()
    if w.size == 1 or not dist.is_initialized():
        return idx
    return idx.tensor_split(w.size)[w.rank]


def local_batch(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's slice of a global batch, and the factor for its mean loss.

    DDP averages the ranks' gradients; scaling rank r's mean loss by ``b_r * W / B`` makes
    that average the gradient of the mean over the whole global batch of ``B`` samples,
    also when the slices are uneven (the last batch, or ``B`` not divisible by ``W``).

    The slice's rows are remembered for the step: random draws made per sample
    (:func:`batch_rand`: dropout masks, dkpp's permutations) then take this rank's rows of
    the single-process draw, and batch-wide sums (:func:`batch_sum`: cwtm's normaliser)
    cover the whole global batch.
    """
    global _batch_rows
    w = world()
    if w.size == 1 or not dist.is_initialized():
        _batch_rows = None
        return idx, 1.0
    parts = idx.tensor_split(w.size)
    start = sum(p.numel() for p in parts[: w.rank])
    part = parts[w.rank]
    _batch_rows = (start, start + part.numel(), idx.numel())
    return part, part.numel() * w.size / max(idx.numel(), 1)


def batch_rand(shape: tuple[int, ...] | torch.Size, *, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.rand(shape)`` for this rank's samples, equal to those rows of the single-process draw.

    ``shape[0]`` is this rank's batch. Under torchrun every rank draws the whole global
    batch's numbers from the same (equally seeded) generator and keeps its own rows, so
    the masks and permutations of a sample do not depend on the number of processes; in
    one process this is plain ``torch.rand``. The draw is ``W`` times larger than a rank
    needs, which costs little next to the forward pass it serves.
    """
    rows = _batch_rows
    if generator is not None:
        device = generator.device
    if rows is None or rows[1] - rows[0] != shape[0]:
        return torch.rand(tuple(shape), device=device, generator=generator)
    start, stop, total = rows
    return torch.rand((total, *shape[1:]), device=device, generator=generator)[start:stop]


def batch_sum(local: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The sum of ``local`` (this rank's partial sum) over the global batch, and this rank's share of it.

    Returns ``(total, b_r / B)``; in one process ``(local, 1.0)``. A loss normalised by a
    sum over the whole batch (cwtm) divides by ``total * b_r / B`` so that, scaled as
    :func:`local_batch` says and averaged by DDP, its gradient is the single-process one.
    """
    rows = _batch_rows
    if rows is None or not dist.is_initialized():
        return local, 1.0
    total = local.detach().clone()
    dist.all_reduce(total)
    start, stop, size = rows
    return total, (stop - start) / max(size, 1)


def batch_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout whose mask is drawn per sample of the global batch (:func:`batch_rand`).

    ``F.dropout`` under torchrun draws each rank's mask from the start of the rank's
    generator, so a sample's mask depends on the world size; this one does not.
    """
    if not training or p == 0.0:
        return x
    keep = batch_rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def all_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (epoch totals: loss, correct, seen)."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank (the epoch's record, after rank 0 evaluated and wrote)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]
