"""``train --sync-bn``: BatchNorm statistics over the whole global batch instead of each rank's slice.

Under torchrun each rank normalises with the statistics of its own slice of the batch by
default (cheap, and what most DDP recipes do); with ``--sync-bn`` every BatchNorm layer
computes them over all ranks' samples, so training sees the batch statistics of the
single-process run. On CUDA that is PyTorch's :class:`torch.nn.SyncBatchNorm`. PyTorch's
layer refuses CPU tensors, so on CPU (gloo) the layers become :class:`GlobalBatchNorm2d`
below: the same statistics, computed with two differentiable all-reduces (sum, then sum of
squared deviations), and the same arithmetic in a single process. The state dict keeps BatchNorm's names, so checkpoints load into the
plain model for export, dumps and evaluation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank (CPU/gloo stand-in for SyncBatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        # The same two-pass arithmetic in one process as on several, so --sync-bn runs compare closely
        # (it is also more accurate than the one-pass float32 CPU kernel on nearly constant channels).
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        total = _sum_over_ranks(torch.cat([x.sum(dims), count]))
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = _sum_over_ranks((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; every rank's output feeds every rank's loss, so the backward sums too."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """A differentiable all-reduce; the identity in one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return _AllReduceSum.apply(t)
    return t


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d synchronised across ranks (in place where possible)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global(model)


def _to_global(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)  # frozen transferred ends stay frozen
        like = next(module.parameters(), None)
        if like is None:
            like = next(module.buffers(), torch.empty(0))
        return new.to(device=like.device, dtype=like.dtype)  # float64 stays float64 (num_batches_tracked stays int)
    for name, child in module.named_children():
        module.add_module(name, _to_global(child))
    return module

