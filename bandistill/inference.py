"""Running a network over in-memory uint8 images in batches (evaluation, dumps, parity checks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bandistill.device import autocast
from bandistill.data.views import ViewPolicy, normalize


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    policy: ViewPolicy | None = None,
    params: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    on_batch=None,
) -> torch.Tensor:
    """Float32 logits ``(N, classes)`` on the CPU for ``images`` (uint8, any device).

    With ``policy`` and ``params``, each image is first turned into the view those
    parameters describe; without them the clean images are used. The model is put in
    eval mode (a teacher in train mode is a classic distillation bug).

    At inference speed: the images and parameters go to the device once (a no-op when they
    are there already, as the training loop's are), the logits stay there until the end,
    and come back in one copy -- no per-batch transfer or host sync.
    """
    device = torch.device(device)
    model.eval()
    mean, std = mean.to(device), std.to(device)
    images = images.to(device)
    if policy is not None and params is not None:
        params = params.to(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        if policy is not None and params is not None:
            x = policy.apply(x, params[start : start + batch_size])
        x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = model(x)
        out.append(logits.float())
        if on_batch is not None:
            on_batch(x.shape[0])
    return _to_host(torch.cat(out)) if out else torch.empty(0)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU: one copy, into pinned memory when it comes from a GPU."""
    if x.device.type == "cpu":
        return x
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return host


def accuracy_and_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 accuracy and mean cross entropy of logits against integer labels."""
    labels = labels.to(logits.device)
    acc = (logits.argmax(1) == labels).float().mean().item()
    nll = F.cross_entropy(logits.float(), labels).item()
    return acc, nll
