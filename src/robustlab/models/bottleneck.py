"""The capacity control of the feature-denoising paper: an ordinary residual bottleneck block.

Xie et al. 2019 compare their denoising blocks with adding the same number of plain ResNet
bottleneck blocks ("+4 bottleneck"), to show that the gain comes from denoising and not from the
extra layers. :class:`BottleneckBlock` is that block, placed where a
:class:`~robustlab.models.denoise.DenoiseBlock` would go (``denoise="bottleneck"`` in
:func:`~robustlab.models.build_model`):

    x + conv1x1_expand(act(bn(conv3x3(act(bn(conv1x1_reduce(x)))))))

with ``bottleneck_channels`` (default ``channels // 4``, as in ResNet) between the 1x1 convs. The
expanding conv starts at zero, so a fresh block is exactly the identity (like the denoising blocks);
there is no activation after the add, which would break that on negative features.

Size: with ``b = channels // 4`` and BatchNorm the block has ``17/16 C^2 + 4b + C`` parameters,
about 0.55x a non-local block (``2 C^2 + C``) at the same width ``C`` -- the paper's ratio too
(64-channel bottlenecks at width 256 against 128-channel embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

from .zoo import make_activation


class BottleneckBlock(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (zero-initialised) -> residual add; same shape in and out.

    Args:
        channels: channels of the feature map (kept).
        bottleneck_channels: width of the inner 3x3 conv (default ``max(1, channels // 4)``).
        activation: the nonlinearity after the first two convs (relu | gelu | silu | softplus).
        batchnorm: BatchNorm after the first two convs (then they have no bias).
    """

    def __init__(self, channels: int, bottleneck_channels: int | None = None, activation: str = "relu",
                 batchnorm: bool = True) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        inner = max(1, int(channels) // 4) if bottleneck_channels is None else bottleneck_channels
        if not isinstance(inner, int) or isinstance(inner, bool) or inner < 1:
            raise ValueError(f"bottleneck_channels must be a positive integer, got {bottleneck_channels!r}")
        if not isinstance(batchnorm, bool):
            raise ValueError(f"batchnorm must be true or false, got {batchnorm!r}")
        self.channels, self.bottleneck_channels, self.batchnorm = int(channels), inner, batchnorm
        c = self.channels

        def norm_act(width: int) -> list[nn.Module]:
            return ([nn.BatchNorm2d(width)] if batchnorm else []) + [make_activation(activation)]

        self.branch = nn.Sequential(
            nn.Conv2d(c, inner, 1, bias=not batchnorm), *norm_act(inner),
            nn.Conv2d(inner, inner, 3, padding=1, bias=not batchnorm), *norm_act(inner),
            nn.Conv2d(inner, c, 1),
        )
        expand = self.branch[-1]
        assert isinstance(expand, nn.Conv2d) and expand.bias is not None
        with torch.no_grad():
            expand.weight.zero_()  # the new block is the identity: x + 0
            expand.bias.zero_()

    def extra_repr(self) -> str:
        """The block's settings for ``print(model)``."""
        return f"channels={self.channels}, bottleneck_channels={self.bottleneck_channels}, batchnorm={self.batchnorm}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + branch(x)`` on an (N, C, H, W) map, same shape."""
        if x.dim() != 4:
            raise ValueError(f"bottleneck blocks take (N, C, H, W) feature maps, got shape {tuple(x.shape)}")
        return x + self.branch(x)


__all__ = ["BottleneckBlock"]
