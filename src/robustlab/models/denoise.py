"""Feature-denoising blocks (Xie et al. 2019, "Feature Denoising for Improving Adversarial Robustness").

A :class:`DenoiseBlock` is ``x + conv1x1(op(x))``: a denoising operation on a feature map, a 1x1
convolution whose weight and bias start at zero (so a freshly inserted block with ``residual=True``
is exactly the identity and does not disturb a network), and a residual connection.

Operations (``op=``):

* ``"nonlocal"`` -- non-local means ``y_i = sum_j f(x_i, x_j) x_j / C(x)`` over all positions,
  with 1x1-conv embeddings ``theta`` and ``phi`` of ``d = channels // 2`` channels:
  ``embed="gaussian"``: ``softmax_j(theta(x_i) . phi(x_j) / sqrt(d))``;
  ``embed="dot"``: ``(theta(x_i) . phi(x_j)) / N`` (N = H * W positions).
* ``"mean"`` -- 3x3 mean filter (stride 1, border windows average only the pixels inside).
* ``"median"`` -- 3x3 median filter per channel (``padding="replicate"`` or ``"reflect"``).
* ``"bilateral"`` -- 3x3 bilateral filter: weights ``exp(-|p_i - p_j|^2 / (2 sigma_s^2))`` times
  ``exp(-d_ij^2 / (2 sigma_r^2))`` with ``d_ij^2`` the mean over channels of the squared feature
  difference, normalised over the window; the same weights for every channel (a joint filter).

Control (``op="null"``, the paper's "null" block): no denoising operation at all, just
``x + conv1x1(x)`` -- the 1x1 conv and the residual, so a gain of the real ops over it is the
denoising and not the extra layer. (The other control, ordinary residual bottleneck blocks of about
the same size, is :class:`~robustlab.models.bottleneck.BottleneckBlock`.)

Ablations: ``use_conv=False`` sends the op's output straight to the residual add (or out, with
``residual=False``); ``residual=False`` drops the skip connection (the 1x1 conv then starts as the
identity map instead of zero, so the block starts as the plain op).

Every constructor argument is JSON-able, so models using the block rebuild from their JSON record.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

OPS: tuple[str, ...] = ("nonlocal", "mean", "median", "bilateral")
# The paper's controls: the null block (1x1 conv + residual, no op) and ordinary bottleneck blocks.
CONTROLS: tuple[str, ...] = ("null", "bottleneck")
EMBEDS: tuple[str, ...] = ("gaussian", "dot")
PADDINGS: tuple[str, ...] = ("replicate", "reflect")


def _check_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"denoising ops take (N, C, H, W) feature maps, got shape {tuple(x.shape)}")


def _windows(x: torch.Tensor, padding: str) -> torch.Tensor:
    """The 3x3 neighbourhood of every pixel: (N, C, 9, H, W), window positions row-major."""
    _check_map(x)
    n, c, h, w = x.shape
    if padding == "reflect" and (h < 2 or w < 2):
        raise ValueError(f"reflect padding needs feature maps of at least 2x2, got {h}x{w}")
    xp = F.pad(x, (1, 1, 1, 1), mode=padding)
    return F.unfold(xp, kernel_size=3).view(n, c, 9, h, w)


class NonLocalMeans(nn.Module):
    """Non-local means over all positions with embedded Gaussian (softmax) or dot-product weights."""

    def __init__(self, channels: int, embed: str = "gaussian", embed_channels: int | None = None) -> None:
        super().__init__()
        embed = str(embed).lower()
        if embed not in EMBEDS:
            raise ValueError(f"unknown non-local embedding {embed!r}: expected one of {', '.join(EMBEDS)}")
        self.embed = embed
        d = int(embed_channels) if embed_channels is not None else max(1, int(channels) // 2)
        if d < 1:
            raise ValueError(f"embed_channels must be >= 1, got {embed_channels}")
        self.embed_channels = d
        self.theta = nn.Conv2d(channels, d, 1, bias=False)
        self.phi = nn.Conv2d(channels, d, 1, bias=False)

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, HW, HW) weights ``w[n, i, j]`` (rows sum to 1 for the Gaussian embedding)."""
        theta = self.theta(x).flatten(2)  # (N, d, HW)
        phi = self.phi(x).flatten(2)
        logits = torch.bmm(theta.transpose(1, 2), phi)  # (N, HW, HW)
        if self.embed == "gaussian":
            return torch.softmax(logits / math.sqrt(self.embed_channels), dim=-1)
        return logits / logits.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each position replaced by the ``affinity``-weighted sum of all positions' features: (N, C, H, W) in and out."""
        _check_map(x)
        n, c, h, w = x.shape
        weights = self.affinity(x)
        values = x.flatten(2)  # (N, C, HW)
        out = torch.bmm(values, weights.transpose(1, 2))  # out[n, c, i] = sum_j w[n, i, j] x[n, c, j]
        return out.view(n, c, h, w)


class MeanFilter(nn.Module):
    """3x3 mean filter, stride 1; windows at the border average only the pixels inside the map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 mean of each (N, C, H, W) feature map, same shape."""
        _check_map(x)
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MedianFilter(nn.Module):
    """3x3 median filter per channel (the 5th of the 9 sorted values); borders padded by
    ``replicate`` or ``reflect``. The gradient flows to the pixel that is the median."""

    def __init__(self, padding: str = "replicate") -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 median of each (N, C, H, W) feature map per channel, same shape."""
        return _windows(x, self.padding).median(dim=2).values


class BilateralFilter(nn.Module):
    """3x3 joint bilateral filter: spatial Gaussian (``sigma_spatial``, in pixels) times a range
    Gaussian on the feature distance (``sigma_range``; the squared distance is the mean over
    channels), normalised over the window. Borders padded by ``replicate`` or ``reflect``."""

    spatial: torch.Tensor  # buffer, registered in __init__

    def __init__(self, sigma_spatial: float = 1.0, sigma_range: float = 1.0, padding: str = "replicate") -> None:
        super().__init__()
        if not (sigma_spatial > 0 and sigma_range > 0):
            raise ValueError(f"bilateral sigmas must be > 0, got {sigma_spatial} and {sigma_range}")
        self.sigma_spatial, self.sigma_range, self.padding = float(sigma_spatial), float(sigma_range), padding
        dy, dx = torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0), indexing="ij")
        spatial = torch.exp(-(dy**2 + dx**2).flatten() / (2 * self.sigma_spatial**2))
        self.register_buffer("spatial", spatial.view(1, 9, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 bilateral average of each (N, C, H, W) feature map, same shape; the weights are shared
        across channels."""
        win = _windows(x, self.padding)  # (N, C, 9, H, W)
        dist2 = (win - x.unsqueeze(2)).pow(2).mean(dim=1)  # (N, 9, H, W)
        weights = self.spatial.to(x.dtype) * torch.exp(-dist2 / (2 * self.sigma_range**2))
        weights = weights / weights.sum(dim=1, keepdim=True)  # the centre weight is 1, so the sum is >= 1
        return (win * weights.unsqueeze(1)).sum(dim=2)


class DenoiseBlock(nn.Module):
    """Denoising op -> 1x1 conv (zero-initialised) -> residual add.

    Args:
        channels: channels of the feature map (kept).
        op: ``nonlocal`` | ``mean`` | ``median`` | ``bilateral``, or ``null`` (no op: the control
            block ``x + conv1x1(x)``; needs ``use_conv``).
        embed: non-local weights, ``gaussian`` (softmax) or ``dot`` (dot product / N).
        use_conv: apply the 1x1 conv after the op (ablation: False).
        residual: add the block's input (ablation: False).
        embed_channels: non-local embedding width (default ``channels // 2``).
        padding: border handling of median and bilateral (``replicate`` | ``reflect``).
        sigma_spatial, sigma_range: bilateral filter widths.
    """

    def __init__(
        self,
        channels: int,
        op: str = "nonlocal",
        embed: str = "gaussian",
        use_conv: bool = True,
        residual: bool = True,
        embed_channels: int | None = None,
        padding: str = "replicate",
        sigma_spatial: float = 1.0,
        sigma_range: float = 1.0,
    ) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        op = str(op).lower()
        if op not in OPS and op != "null":
            raise ValueError(f"unknown denoising op {op!r}: expected one of {', '.join(OPS)}, null")
        if op == "null" and not use_conv:
            raise ValueError("the null block is the 1x1 conv and the residual: it needs use_conv=True")
        padding = str(padding).lower()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}: expected one of {', '.join(PADDINGS)}")
        self.channels, self.op_name = int(channels), op
        self.use_conv, self.residual = bool(use_conv), bool(residual)
        if op == "nonlocal":
            self.op: nn.Module = NonLocalMeans(self.channels, embed, embed_channels)
        elif op == "null":
            self.op = nn.Identity()  # nothing between the input and the 1x1 conv
        elif op == "mean":
            self.op = MeanFilter()
        elif op == "median":
            self.op = MedianFilter(padding)
        else:
            self.op = BilateralFilter(sigma_spatial, sigma_range, padding)
        self.conv: nn.Module | None = None
        if self.use_conv:
            conv = nn.Conv2d(self.channels, self.channels, 1)
            assert conv.bias is not None  # nn.Conv2d has a bias by default
            with torch.no_grad():
                conv.bias.zero_()
                if self.residual:
                    conv.weight.zero_()  # the new block is the identity: x + 0
                else:
                    conv.weight.copy_(torch.eye(self.channels).view(self.channels, self.channels, 1, 1))
            self.conv = conv

    def extra_repr(self) -> str:
        """The block's settings (channels, op, use_conv, residual) for ``print(model)``."""
        return f"channels={self.channels}, op={self.op_name}, use_conv={self.use_conv}, residual={self.residual}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + conv(op(x))`` on an (N, C, H, W) map, same shape (without the conv or the residual add
        when they are switched off)."""
        out = self.op(x)
        if self.conv is not None:
            out = self.conv(out)
        return x + out if self.residual else out


__all__ = ["BilateralFilter", "CONTROLS", "DenoiseBlock", "EMBEDS", "MeanFilter", "MedianFilter", "NonLocalMeans", "OPS", "PADDINGS"]
