"""CIFAR DenseNet-BC (densenet-bc-<depth>-<growth>, depth 6n+4).

Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017: a 3x3 stem conv to 2k channels, then 3 dense blocks of n = (depth-4)/6
bottleneck layers (BN-ReLU-conv1x1 to 4k, BN-ReLU-conv3x3 to k, output concatenated
to the input), transitions with compression 0.5 (BN-ReLU-conv1x1-avgpool2) between
blocks, a final BN-ReLU, global average pooling and a linear classifier.

``memory_efficient=True`` recomputes each bottleneck's concat-BN-ReLU-conv1x1 in the
backward pass instead of storing it (Pleiss et al. 2017, "Memory-Efficient
Implementation of DenseNets"), using :func:`torch.utils.checkpoint.checkpoint`.
Outputs, gradients and BN running statistics are the same as without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from bandistill.models.resnet import init_weights


class Bottleneck(nn.Module):
    """One dense layer: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) on the concatenated inputs."""

    def __init__(self, in_planes: int, growth: int, memory_efficient: bool) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *features: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        x = torch.cat(features, 1)
        if update_stats:
            x = self.norm1(x)
        else:
            # Recomputation during backward: the same op, but the running statistics it
            # updates are throwaway copies, so the real ones are updated once per step.
            n = self.norm1
            mean, var = n.running_mean.clone(), n.running_var.clone()  # type: ignore[union-attr]
            x = F.batch_norm(x, mean, var, n.weight, n.bias, training=True, eps=n.eps)
        return self.conv1(F.relu(x))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            calls = 0

            def bottleneck(*inputs: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                calls += 1
                return self._bottleneck(*inputs, update_stats=calls == 1)

            # no RNG inside (BN, ReLU, conv): nothing to preserve, and a CUDA graph capture may not read it
            out = torch.utils.checkpoint.checkpoint(bottleneck, *features, use_reentrant=False,
                                                    preserve_rng_state=False)
        else:
            out = self._bottleneck(*features)
        return self.conv2(F.relu(self.norm2(out)))


class DenseBlock(nn.Module):
    """``num_layers`` bottlenecks; each sees the concatenation of all earlier outputs."""

    def __init__(
        self, num_layers: int, in_planes: int, growth: int, memory_efficient: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Bottleneck(in_planes + i * growth, growth, memory_efficient) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1-avgpool2 between dense blocks."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )


class DenseNetBC(nn.Module):
    """DenseNet-BC-<depth>-<growth> for CIFAR (Huang et al. 2017); depth should be 6n+4.

    Each block has floor((depth-4)/6) layers, as in the reference implementations; this
    is how the BAN paper's DenseNet-80-80 and -90-60, whose depth is not 6n+4, are built.

    Attributes ``stem`` (the first conv) and ``classifier`` (the final linear layer)
    are common to every model of the zoo.
    """

    def __init__(
        self,
        depth: int,
        growth: int,
        num_classes: int,
        in_channels: int = 3,
        memory_efficient: bool = False,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 10:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 with n >= 1, got {depth}")
        if growth < 1:
            raise ValueError(f"DenseNet-BC growth rate must be >= 1, got {growth}")
        n = (depth - 4) // 6
        planes = 2 * growth
        self.stem = nn.Conv2d(in_channels, planes, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            stages.append(DenseBlock(n, planes, growth, memory_efficient))
            planes += n * growth
            if i < 2:
                out_planes = int(planes * compression)
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.stem(x))
        out = F.relu(self.norm(out))
        return self.classifier(torch.flatten(self.pool(out), 1))
