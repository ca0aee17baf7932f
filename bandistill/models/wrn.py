"""Wide Residual Networks for CIFAR (wrn-<depth>-<width>, depth 6n+4).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016: a 3x3 stem conv to 16
channels, then 3 groups of n pre-activation basic blocks (BN-ReLU-conv3x3, optional
dropout, BN-ReLU-conv3x3) with 16w, 32w and 64w channels (stride 2 at the start of
groups 2 and 3), a final BN-ReLU, global average pooling and a linear classifier.
Shortcuts that change shape are 1x1 convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bandistill.distributed import batch_dropout
from bandistill.models.resnet import conv3x3, init_weights


class WideBasicBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the two convs."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input, as in the paper's code.
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = batch_dropout(out, self.dropout, self.training)  # the same masks under torchrun
        return self.conv2(out) + identity


class WideResNet(nn.Module):
    """WRN-<depth>-<width> (Zagoruyko & Komodakis 2016); depth must be 6n+4.

    Attributes ``stem`` (the first conv) and ``classifier`` (the final linear layer)
    are common to every model of the zoo.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        self.stem = conv3x3(in_channels, 16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16 * width, 32 * width, 64 * width)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.features = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.stem(x))
        out = F.relu(self.norm(out))
        return self.classifier(torch.flatten(self.pool(out), 1))
