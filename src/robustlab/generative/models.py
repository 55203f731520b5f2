"""The networks of the generative side, small enough to train on a CPU in minutes.

* :class:`Generator` / :class:`Discriminator`: DCGAN (Radford et al. 2016) for square images whose
  side is a multiple of 4 (28x28x1 Fashion-MNIST, 32x32x3 CIFAR-10, 8x8 digits): transposed
  convolutions up from a dense layer, strided convolutions down, LeakyReLU in D. Optional class
  conditioning (one-hot label appended to the code for G and as constant input planes for D) and,
  in G, virtual batch normalisation (:class:`VirtualBatchNorm`).
* :class:`ImageToImage`: an encoder / residual / decoder network mapping an image to an image
  (CycleGAN's generators) or to a perturbation in [-1, 1] (AdvGAN's generator).
* :class:`PatchDiscriminator`: a PatchGAN discriminator (one logit per image patch).

Every network is built through :func:`build_network`, which records its constructor arguments in
``robustlab_config`` so a checkpoint rebuilds it from JSON alone (see :mod:`.checkpoint`).
Generated images are in [0, 1], the threat model's default bounds.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import check_options, lookup


class VirtualBatchNorm(nn.Module):
    """Virtual batch normalisation (Salimans et al. 2016, "Improved techniques for training GANs").

    Batch normalisation makes a generated image depend on the other images of its batch. VBN
    normalises every example with the statistics of a fixed *reference batch* (chosen once, at
    the start of training) combined with the example itself, weight ``1 / (n_ref + 1)``; the
    reference rows are normalised with their own statistics. The caller passes the activations of
    the reference batch as the first ``n_ref`` rows of ``h`` (one forward pass for both), so the
    statistics follow the current weights and gradients flow through them, as in the paper.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, h: torch.Tensor, n_ref: int) -> torch.Tensor:
        """Normalise ``h`` with the statistics of its first ``n_ref`` rows (the reference batch), so
        a sample's output does not depend on the rest of its batch."""
        if not 0 < n_ref <= h.shape[0]:
            raise ValueError(f"VirtualBatchNorm needs the {n_ref} reference rows first, got a batch of {h.shape[0]}")
        dims = [0] + list(range(2, h.dim()))
        spatial = list(range(2, h.dim()))
        ref = h[:n_ref]
        ref_mean, ref_sq = ref.mean(dims, keepdim=True), ref.pow(2).mean(dims, keepdim=True)
        rest = h[n_ref:]
        if spatial:
            own_mean, own_sq = rest.mean(spatial, keepdim=True), rest.pow(2).mean(spatial, keepdim=True)
        else:
            own_mean, own_sq = rest, rest.pow(2)
        c = 1.0 / (n_ref + 1)
        mean = torch.cat([ref_mean.expand(n_ref, *ref_mean.shape[1:]), c * own_mean + (1 - c) * ref_mean])
        sq = torch.cat([ref_sq.expand(n_ref, *ref_sq.shape[1:]), c * own_sq + (1 - c) * ref_sq])
        var = (sq - mean.pow(2)).clamp_min(0)
        shape = [1, -1] + [1] * len(spatial)
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def _upsamplings(image_size: int) -> int:
    """Doublings from the dense layer's map to ``image_size``: 3 for 32 / 64, 2 for 28 / 8 / 12."""
    if image_size < 8 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {image_size}")
    return 3 if image_size % 8 == 0 and image_size >= 32 else 2


class Generator(nn.Module):
    """DCGAN generator: code (``z``, plus the one-hot class when conditional) -> image in [0, 1].

    ``norm``: ``"batch"`` (DCGAN) or ``"virtual"`` (VBN with a reference batch of ``n_ref`` codes
    drawn once from ``ref_seed`` and stored as a buffer, so a checkpoint reproduces it exactly).
    """

    # buffers registered in __init__ when norm == "virtual" (declared for the type checker)
    ref_z: torch.Tensor
    ref_y: torch.Tensor

    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 28, width: int = 32,
                 num_classes: int = 0, norm: str = "batch", n_ref: int = 32, ref_seed: int = 0) -> None:
        super().__init__()
        if norm not in ("batch", "virtual"):
            raise ValueError(f"generator norm must be 'batch' or 'virtual', got {norm!r}")
        n_up = _upsamplings(image_size)
        self.latent_dim, self.num_classes, self.norm_kind, self.n_ref = latent_dim, num_classes, norm, n_ref
        self.start = image_size >> n_up
        widths = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 64, 32 for two doublings
        self.fc = nn.Linear(self.code_dim, widths[0] * self.start**2)
        self.ups = nn.ModuleList()
        self.norms = nn.ModuleList([self._norm(widths[0])])
        for i in range(n_up):
            cout = widths[i + 1] if i + 1 < n_up else channels
            self.ups.append(nn.ConvTranspose2d(widths[i], cout, 4, 2, 1))
            if i + 1 < n_up:
                self.norms.append(self._norm(cout))
        self.widths = widths
        if norm == "virtual":
            g = torch.Generator().manual_seed(int(ref_seed))
            self.register_buffer("ref_z", torch.randn(n_ref, latent_dim, generator=g))
            self.register_buffer("ref_y", torch.randint(0, max(num_classes, 1), (n_ref,), generator=g))

    def _norm(self, c: int) -> nn.Module:
        return VirtualBatchNorm(c) if self.norm_kind == "virtual" else nn.BatchNorm2d(c)

    @property
    def code_dim(self) -> int:
        """Length of the code the dense layer reads: ``latent_dim`` (+ ``num_classes``)."""
        return self.latent_dim + self.num_classes

    def code(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The full code for latent ``z`` and (conditional generators) class labels ``y``."""
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("this generator is not class-conditional: give no labels")
            return z
        if y is None:
            raise ValueError("a class-conditional generator needs labels y")
        return torch.cat([z, F.one_hot(y.long(), self.num_classes).to(z.dtype)], dim=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] decoded from codes ``z`` (with class labels ``y`` when conditional)."""
        return self.decode(self.code(z, y))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Images for full codes (what code arithmetic combines)."""
        n_ref = 0
        if self.norm_kind == "virtual":
            ref = self.code(self.ref_z, self.ref_y if self.num_classes else None).to(code.dtype)
            code, n_ref = torch.cat([ref, code]), self.n_ref
        h = self.fc(code).view(code.shape[0], self.widths[0], self.start, self.start)
        h = F.relu(self._apply_norm(0, h, n_ref))
        for i, up in enumerate(self.ups):
            h = up(h)
            if i + 1 < len(self.ups):
                h = F.relu(self._apply_norm(i + 1, h, n_ref))
        return torch.sigmoid(h[n_ref:])

    def _apply_norm(self, i: int, h: torch.Tensor, n_ref: int) -> torch.Tensor:
        m = self.norms[i]
        return m(h, n_ref) if isinstance(m, VirtualBatchNorm) else m(h)


class Discriminator(nn.Module):
    """DCGAN discriminator: image (+ one-hot class planes when conditional) -> one logit.

    ``norm``: ``"batch"`` (DCGAN, not on the first layer) or ``"none"``."""

    def __init__(self, channels: int = 1, image_size: int = 28, width: int = 32, num_classes: int = 0,
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"discriminator norm must be 'batch' or 'none', got {norm!r}")
        n_down = _upsamplings(image_size)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        cin, side = channels + num_classes, image_size
        for i in range(n_down):
            cout = width * 2**i
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            cin, side = cout, side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * side * side, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One real-vs-generated logit per image (conditioned on ``y`` when conditional)."""
        if self.num_classes:
            if y is None:
                raise ValueError("a class-conditional discriminator needs labels y")
            planes = F.one_hot(y.long(), self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.head(self.features(x).flatten(1)).squeeze(1)


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ImageToImage(nn.Module):
    """Encoder (``downsamplings`` stride-2 convolutions, doubling the width each), ``blocks``
    residual blocks, decoder (as many transposed convolutions); instance normalisation as in
    CycleGAN. ``output="image"`` ends in a sigmoid (an image in [0, 1]); ``output="perturbation"``
    in a tanh (a direction in [-1, 1] that AdvGAN scales by eps). Image sides must be multiples of
    ``2 ** downsamplings``; more downsamplings widen the receptive field at little cost."""

    def __init__(self, channels: int = 1, width: int = 16, blocks: int = 2, output: str = "image",
                 downsamplings: int = 1) -> None:
        super().__init__()
        if output not in ("image", "perturbation"):
            raise ValueError(f"output must be 'image' or 'perturbation', got {output!r}")
        if downsamplings not in (1, 2, 3):
            raise ValueError(f"downsamplings must be 1, 2 or 3, got {downsamplings!r}")
        self.output, self.factor = output, 2**downsamplings
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.InstanceNorm2d(width, affine=True), nn.ReLU()]
        w = width
        for _ in range(downsamplings):
            layers += [nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU()]
            w *= 2
        layers += [_Residual(w) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1), nn.InstanceNorm2d(w // 2, affine=True), nn.ReLU()]
            w //= 2
        layers.append(nn.Conv2d(w, channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The translated images, same shape as ``x``, in [0, 1]."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"this ImageToImage network needs image sides divisible by {self.factor}, got {tuple(x.shape[-2:])}")
        h = self.net(x)
        return torch.sigmoid(h) if self.output == "image" else torch.tanh(h)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017): a map of logits, one per receptive-field patch
    (18x18 pixels). No normalisation: instance normalisation would remove the absolute brightness
    that tells a dark background from a light one on these small grey images."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A map of real-vs-translated logits, one per image patch."""
        return self.net(x)


NETWORKS: dict[str, type[nn.Module]] = {
    "dcgan-generator": Generator,
    "dcgan-discriminator": Discriminator,
    "image-to-image": ImageToImage,
    "patch-discriminator": PatchDiscriminator,
}


def build_network(name: str, seed: int | None = None, **options: Any) -> nn.Module:
    """Build a registered network (unknown names / options are a ValueError), initialised from
    ``seed`` when given, with its full constructor arguments in ``robustlab_config``."""
    key, cls = lookup(NETWORKS, name, "network")
    check_options(cls, options, f"network {key!r}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = cls(**options)
    else:
        net = cls(**options)
    bound = inspect.signature(cls).bind(**options)
    bound.apply_defaults()
    net.robustlab_config = {"name": key, **dict(bound.arguments)}  # type: ignore[assignment]
    return net
