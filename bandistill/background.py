"""Checkpoints written off the hot path: a host snapshot now, the disk write on a thread.

:func:`host_snapshot` copies every tensor of a checkpoint dict to host memory: from a GPU
into pinned buffers with non-blocking copies queued on the current stream (so they read the
weights as they are *now*, before the next step changes them, and the host does not wait);
on the CPU by cloning (the next step updates the weights in place). :class:`BackgroundWriter`
then serialises it on a worker thread, after the copies have landed. At most one write is
in flight, and an error in it (disk full, interrupted) is raised in the training thread at
the next :meth:`BackgroundWriter.submit` or :meth:`BackgroundWriter.wait` -- never lost.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch


def host_snapshot(obj: Any) -> tuple[Any, torch.cuda.Event | None]:
    """A copy of ``obj`` (nested dicts, lists, tuples) whose tensors are on the host.

    Returns the copy and, when anything came from a GPU, the event after which it is valid.
    """
    on_gpu = False

    def copy(x: Any) -> Any:
        nonlocal on_gpu
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.device.type == "cpu":
                return x.clone()
            on_gpu = True
            host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            return host.copy_(x, non_blocking=True)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    out = copy(obj)
    event = None
    if on_gpu:
        event = torch.cuda.Event()
        event.record()
    return out, event


class BackgroundWriter:
    """Runs one write at a time on a thread; the training thread only waits for the previous one."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[Any, Any], None], obj: Any, path: Any) -> None:
        """Snapshot ``obj`` to the host now and call ``write(snapshot, path)`` on the worker thread."""
        self.wait()
        snapshot, ready = host_snapshot(obj)

        def work() -> None:
            try:
                if ready is not None:
                    ready.synchronize()
                write(snapshot, path)
            except BaseException as exc:  # re-raised in the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name="bandistill-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
