"""The hot training step: views -> normalise -> forward -> loss -> backward -> optimizer step.

:func:`train_step` is the whole algorithm of one step, on tensors that already live on the
device. It reads the batch's sample indices, this epoch's view parameters and (for a
student) the teacher's logits for those views, and adds the batch's summed loss and correct
count to two device tensors. It never asks the device for a value (no ``.item()``, no
host syncs) and, given a batch of fixed size, every shape in it is static, so the same
function runs eagerly or is captured once and replayed.

:class:`TrainStep` owns the tensors the step reads and the running totals; the loop in
:mod:`bandistill.train` (``TrainRun``) only cuts batches, sets the lr and keeps the books.

Capture (``compile="graph"``, the default on CUDA): after a few eager warm-up steps the
whole step -- view gathers, forward, backward, fused optimizer step, totals -- is recorded
once as a CUDA graph (``torch.cuda.graph``) and every later full batch is one
``graph.replay()``: a handful of host calls instead of hundreds to thousands of kernel
launches. Everything the graph reads lives at a fixed address (the batch indices, the
teacher logits and the epoch's view parameters are copied into static buffers; the lr is a
device tensor the fused SGD reads). The last, partial batch of an epoch (``N mod B``
samples) runs the same function eagerly, so every sample is seen every epoch, exactly as
without capture; the shapes of the captured graph never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bandistill.device import autocast
from bandistill.distributed import all_sum
from bandistill.errors import UserError
from bandistill.data.views import ViewPolicy, normalize

#: ``loss_fn(student_logits, labels, teacher_logits_or_None) -> scalar``
LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
#: A step's soft targets: a tensor, None (labels only), or a live teacher ``x -> logits``.
Teacher = "torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None"

#: ``--compile`` choices: ``auto`` is ``graph`` on CUDA and ``none`` elsewhere.
COMPILE_MODES = ("auto", "graph", "none")

#: Eager full-batch steps before capture (cuDNN autotuning, the optimizer's momentum buffers).
WARMUP_STEPS = 3


def resolve_compile(mode: str, device: torch.device) -> str:
    """``graph`` or ``none`` for ``--compile mode`` on ``device``; :class:`UserError` on a bad choice."""
    key = (mode or "auto").lower()
    if key not in COMPILE_MODES:
        raise UserError(f"unknown --compile '{mode}': choose one of {', '.join(COMPILE_MODES)}")
    if key == "auto":
        return "graph" if device.type == "cuda" else "none"
    if key == "graph" and device.type != "cuda":
        raise UserError("--compile graph captures CUDA graphs and needs a GPU; use --compile none (or auto) here")
    return key


def make_sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
             device: torch.device) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weights, not on biases and BN parameters.

    On CUDA the optimizer is fused (one kernel for all parameters) and reads the lr from a
    device tensor, so setting the lr launches nothing the host waits for and a captured step
    sees the new value. On the CPU it is PyTorch's default SGD with a float lr, as before.
    """
    decay, no_decay = [], []
    for p in (p for p in model.parameters() if p.requires_grad):
        (no_decay if p.ndim <= 1 else decay).append(p)
    on_gpu = device.type == "cuda"
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=torch.tensor(lr, device=device) if on_gpu else lr,
        momentum=momentum,
        nesterov=momentum > 0,
        fused=True if on_gpu else None,
    )


@dataclass
class StepData:
    """Everything a step reads besides the batch, on the training device.

    ``images`` (N, C, H, W) uint8 and ``labels`` (N,) are the whole training split;
    ``params`` (N, P) are the view parameters every sample is shown this epoch.
    """

    images: torch.Tensor
    labels: torch.Tensor
    params: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    policy: ViewPolicy


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    data: StepData,
    idx: torch.Tensor,
    teacher: Teacher,
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    loss_scale: float = 1.0,
) -> None:
    """One optimizer step on samples ``idx``; adds the batch's loss sum and hits to the totals.

    ``teacher``: the teacher's float32 logits ``(B, C)`` for exactly the views made here, or
    None for a label-only run, or a live teacher: a function run on the step's own input
    ``x`` (online distillation, see :mod:`bandistill.soft_targets`). The lr is whatever the
    optimizer's param groups hold.
    ``loss_scale``: under torchrun, what makes DDP's average of the ranks' gradients the
    gradient of the whole global batch's mean loss (see :func:`bandistill.distributed.local_batch`).
    """
    x = normalize(data.policy.apply(data.images[idx], data.params[idx]), data.mean, data.std)
    y = data.labels[idx]
    if callable(teacher):
        teacher = teacher(x)
    with autocast(x.device):
        logits = model(x)
    loss = loss_fn(logits.float(), y, teacher)
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    loss_sum += loss.detach() * idx.numel()
    correct += (logits.detach().argmax(1) == y).sum()


class TrainStep:
    """The step with its state: model, optimizer, loss, the data it reads, the epoch's totals.

    Use: ``begin_epoch(params)``, then ``set_lr(lr)`` and ``step(idx, teacher)`` per batch,
    then ``end_epoch()`` for ``(mean loss, accuracy, samples)`` -- the one host sync of an epoch.
    With ``capture``, full batches of ``batch_size`` replay one CUDA graph (module docstring);
    ``before_capture`` is called once, just before the capture (see :meth:`_capture`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        data: StepData,
        *,
        capture: bool = False,
        batch_size: int = 0,
        teacher_classes: int | None = None,
        before_capture: Callable[[], None] | None = None,
    ):
        self.model, self.optimizer, self.loss_fn, self.data = model, optimizer, loss_fn, data
        self.before_capture = before_capture
        dev = data.images.device
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev, dtype=torch.long)
        self.seen = 0
        self.lr = 0.0  # the lr of the last set_lr, as a Python float (for checkpoints)
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = 0
        self._scale = 1.0  # the loss scale baked into the graph (1 outside torchrun)
        if capture:
            n, p = data.images.shape[0], data.policy.num_params
            self.batch_size = batch_size
            self.data.params = torch.zeros((n, p), dtype=torch.int16, device=dev)
            self._idx = torch.zeros(batch_size, dtype=torch.long, device=dev)
            self._teacher = None if teacher_classes is None else torch.zeros((batch_size, teacher_classes),
                                                                              device=dev)

    def begin_epoch(self, params: torch.Tensor) -> None:
        """Reset the totals; ``params`` (N, P) are this epoch's view parameters."""
        if self.capture:
            self.data.params.copy_(params)  # in place: the graph reads this address
        else:
            self.data.params = params
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0
        self.model.train()

    def set_lr(self, lr: float) -> None:
        """The lr of the coming steps: written into a device tensor in place when the groups hold one."""
        self.lr = lr
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def step(self, idx: torch.Tensor, teacher: Teacher = None, loss_scale: float = 1.0) -> None:
        """One step on samples ``idx`` (with the teacher's logits for their views, or a live teacher, for a student)."""
        self.seen += idx.numel()
        if not self.capture or idx.numel() != self.batch_size or loss_scale != self._scale or callable(teacher):
            # a partial batch (or another scale, or a live teacher's forward pass): same step, uncaptured
            self._eager(idx, teacher, loss_scale)
            return
        self._idx.copy_(idx, non_blocking=True)
        if teacher is not None:
            self._teacher.copy_(teacher, non_blocking=True)
        if self.graph is None and self._warm < WARMUP_STEPS:
            # warm-up on a side stream, as torch.cuda.graph asks; these are real steps
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._eager(self._idx, self._teacher, loss_scale)
            torch.cuda.current_stream().wait_stream(side)
            self._warm += 1
            return
        if self.graph is None:
            self._capture(loss_scale)
        self.graph.replay()

    def _capture(self, loss_scale: float) -> None:
        """Record the step as a CUDA graph (runs nothing).

        Capture is global: while it lasts, a CUDA call that may synchronise (an event wait, freeing
        pinned memory) from *any* thread of the process is an error. The checkpoint writer's thread
        makes such calls, and with fewer than ``WARMUP_STEPS + 1`` full batches an epoch capture
        falls in a later epoch, while a checkpoint may be in flight: ``before_capture`` (the
        writer's ``wait``) lets it finish first.
        """
        if self.before_capture is not None:
            self.before_capture()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._eager(self._idx, self._teacher, loss_scale)

    def _eager(self, idx: torch.Tensor, teacher: Teacher, loss_scale: float) -> None:
        train_step(self.model, self.optimizer, self.loss_fn, self.data, idx, teacher, self.loss_sum, self.correct,
                   loss_scale)

    def end_epoch(self) -> tuple[float, float, int]:
        """``(mean loss, train accuracy, samples seen)`` of the epoch (reads the device once)."""
        seen = torch.tensor(self.seen, device=self.loss_sum.device)
        all_sum(self.loss_sum, self.correct, seen)  # under torchrun: totals over every rank's slices
        total = int(seen.item())
        return self.loss_sum.item() / max(total, 1), self.correct.item() / max(total, 1), total
