"""CIFAR DenseNet-BC (densenet-bc-<depth>-<growth>, depth 6n+4).

Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017: a 3x3 stem conv to 2k channels, then 3 dense blocks of n = (depth-4)/6
bottleneck layers (BN-ReLU-conv1x1 to 4k, BN-ReLU-conv3x3 to k, output concatenated
to the input), transitions with compression 0.5 (BN-ReLU-conv1x1-avgpool2) between
blocks, a final BN-ReLU, global average pooling and a linear classifier.

Training runs each dense block on one preallocated buffer (:class:`SharedBufferBlock`):
every layer reads the block's features so far as a prefix of the buffer and writes its
own k channels after them, instead of concatenating all earlier outputs again; backward
keeps one gradient buffer and each layer adds its input's gradient into it once, instead
of one small addition per earlier feature map (O(L) operations per block instead of
O(L^2)). This is the shared-storage idea of Pleiss et al. 2017, "Memory-Efficient
Implementation of DenseNets", without the recomputation; the network -- parameters,
function, gradients, BN statistics -- is the one of the concatenating form, which
evaluation and export use (and the CPU, see :data:`SHARED_BUFFER_DEVICES`).

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

#: Devices whose training pass uses the shared buffer. Not the CPU: there BatchNorm on a prefix of
#: the buffer (a strided tensor) measured slower than concatenating (densenet-bc-40-12, batch 16:
#: 1.23 s vs 0.66 s per step, 1 thread); on a GPU it replaces hundreds of small kernels.
SHARED_BUFFER_DEVICES = ("cuda",)


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
            # Recomputation during backward: the layer itself (plain, or synchronised across ranks
            # under --sync-bn: the same ops, the same statistics as the first pass), but updating
            # throwaway copies of its running statistics, so the real ones are updated once per step.
            # The real buffers are swapped out, not written back: autograd saved them.
            n = self.norm1
            real = dict(n.named_buffers(recurse=False))
            try:
                for name, buf in real.items():
                    setattr(n, name, buf.clone())
                x = n(x)
            finally:
                for name, buf in real.items():
                    setattr(n, name, buf)
        return self.conv1(F.relu(x))

    def forward_concatenated(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on its inputs already concatenated (a prefix of the block's shared buffer)."""
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out)))

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
        shared = x.device.type in SHARED_BUFFER_DEVICES and not self.layers[0].memory_efficient
        if shared and self.training and torch.is_grad_enabled():
            params = [p for layer in self.layers for p in layer.parameters() if p.requires_grad]
            return SharedBufferBlock.apply(x, self.layers, *params)
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def _prefix(buf: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` channels of ``buf``, as a tensor of its own that shares buf's memory.

    Not an autograd view: later layers write *other* channels of ``buf``, which must not
    count as modifying what this layer's BatchNorm saved for backward.
    """
    b, _, h, w = buf.shape
    out = buf.new_empty(0)
    out.set_(buf.untyped_storage(), buf.storage_offset(), (b, channels, h, w), buf.stride())
    return out


class SharedBufferBlock(torch.autograd.Function):
    """A dense block's training pass on one preallocated feature buffer (see the module docstring).

    ``forward`` builds a small autograd graph per layer (prefix of the buffer -> the layer's k
    new channels); ``backward`` walks the layers in reverse with one gradient buffer, running
    each layer's graph once with :func:`torch.autograd.grad`, and *returns* the parameters'
    gradients as the gradients of the Function's ``params`` inputs. So each parameter's gradient
    reaches ``.grad`` once, through its own accumulation node, where DDP's hook fires once per
    step; accumulating into ``.grad`` inside the inner pass (as reentrant checkpointing does)
    would fire it twice ("Expected to mark a variable ready only once"). ``params`` must be the
    trainable parameters of ``layers``, in ``layers.parameters()`` order.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: nn.ModuleList, *params: torch.Tensor) -> torch.Tensor:
        b, c0, h, w = x.shape
        growth = layers[0].conv2.out_channels
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        buf = torch.empty((b, c0 + len(layers) * growth, h, w), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        buf[:, :c0].copy_(x)
        inputs, outputs = [], []
        with torch.enable_grad():
            for i, layer in enumerate(layers):
                c = c0 + i * growth
                inp = _prefix(buf, c).requires_grad_()
                out = layer.forward_concatenated(inp)
                buf[:, c : c + growth].copy_(out.detach())
                inputs.append(inp)
                outputs.append(out)
        ctx.inputs, ctx.outputs, ctx.c0, ctx.growth = inputs, outputs, c0, growth
        ctx.layer_params = [[p for p in layer.parameters() if p.requires_grad] for layer in layers]
        return buf

    @staticmethod
    def backward(ctx, grad_buf: torch.Tensor):
        grad = grad_buf.clone()
        param_grads: list[tuple[torch.Tensor | None, ...]] = [()] * len(ctx.outputs)
        for i in reversed(range(len(ctx.outputs))):
            c = ctx.c0 + i * ctx.growth
            # the layer's k channels have all their gradient now: every later reader added its share
            got = torch.autograd.grad(ctx.outputs[i], [ctx.inputs[i], *ctx.layer_params[i]],
                                      grad[:, c : c + ctx.growth], allow_unused=True)
            grad[:, :c] += got[0]
            param_grads[i] = got[1:]
        ctx.inputs = ctx.outputs = ctx.layer_params = None
        flat = [g for layer in param_grads for g in layer]
        return (grad[:, : ctx.c0] if ctx.needs_input_grad[0] else None, None, *flat)


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
