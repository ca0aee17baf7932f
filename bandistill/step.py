"""The hot training step: views -> normalise -> forward -> loss -> backward -> optimizer step.

:func:`train_step` is the whole algorithm of one step, on tensors that already live on the
device. It reads the batch's sample indices, this epoch's view parameters and (for a
student) the teacher's logits for those views, and adds the batch's summed loss and correct
count to two device tensors. It never asks the device for a value (no ``.item()``, no
host syncs) and, given a batch of fixed size, every shape in it is static, so the same
function can run eagerly or be captured once and replayed.

:class:`TrainStep` owns the tensors the step reads and the running totals; the loop in
:mod:`bandistill.train` (``TrainRun``) only cuts batches, sets the lr and keeps the books.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bandistill.device import autocast
from bandistill.distributed import all_sum
from bandistill.views import ViewPolicy, normalize

#: ``loss_fn(student_logits, labels, teacher_logits_or_None) -> scalar``
LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


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
    teacher: torch.Tensor | None,
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    loss_scale: float = 1.0,
) -> None:
    """One optimizer step on samples ``idx``; adds the batch's loss sum and hits to the totals.

    ``teacher``: the teacher's float32 logits ``(B, C)`` for exactly the views made here, or
    None for a label-only run. The lr is whatever the optimizer's param groups hold.
    ``loss_scale``: under torchrun, what makes DDP's average of the ranks' gradients the
    gradient of the whole global batch's mean loss (see :func:`bandistill.distributed.local_batch`).
    """
    x = normalize(data.policy.apply(data.images[idx], data.params[idx]), data.mean, data.std)
    y = data.labels[idx]
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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        data: StepData,
    ):
        self.model, self.optimizer, self.loss_fn, self.data = model, optimizer, loss_fn, data
        dev = data.images.device
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev, dtype=torch.long)
        self.seen = 0

    def begin_epoch(self, params: torch.Tensor) -> None:
        """Reset the totals; ``params`` (N, P) are this epoch's view parameters."""
        self.data.params = params
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0
        self.model.train()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, idx: torch.Tensor, teacher: torch.Tensor | None = None, loss_scale: float = 1.0) -> None:
        train_step(self.model, self.optimizer, self.loss_fn, self.data, idx, teacher, self.loss_sum, self.correct,
                   loss_scale)
        self.seen += idx.numel()

    def end_epoch(self) -> tuple[float, float, int]:
        """``(mean loss, train accuracy, samples seen)`` of the epoch (reads the device once)."""
        seen = torch.tensor(self.seen, device=self.loss_sum.device)
        all_sum(self.loss_sum, self.correct, seen)  # under torchrun: totals over every rank's slices
        total = int(seen.item())
        return self.loss_sum.item() / max(total, 1), self.correct.item() / max(total, 1), total
