"""The learned filter: a small LeNet-style fully convolutional net that predicts a residual.

Architectures (``ModelConfig.arch``):

* ``residual`` (default): ``out = x + tail(body(head(x)))``. ``head`` is a conv + activation at
  full resolution, ``body`` is ``depth - 2`` conv + activation layers, ``tail`` a conv back to
  the image's channels. With ``pool = P > 1`` the body runs at 1/P resolution: the head's features
  are average-pooled by P, go through the body, are upsampled back (bilinear) and added to the
  head's features before the tail (a LeNet-style pooling stage with a skip back to full size),
  which widens the receptive field P times for a quarter (P = 2) of the cost.
* ``linear``: one conv with a bias and nothing else, started at the identity. It can represent
  any linear kernel of its size exactly (plus a constant offset), so mimicking a linear chain
  recovers the chain's combined kernel.

The image is extended once, by the net's whole reach, with a convkit border mode (``border``,
default reflect = OpenCV REFLECT_101) through :func:`convkit.nn.functional.pad`, so any image size
works, 1x1 included, the output has the input's size, and border pixels are treated like a fixed
filter treats them. (For symmetric filters with reflect borders, extending once equals extending
before every step of a chain.)

Channels: by default (``channels = 1``) the net sees one channel at a time; the channels of an
image are folded into the batch. It therefore runs on grey, RGB or any other channel count, like
convkit's fixed filters (depthwise), and a model trained on RGB photos applies to grey images
unchanged. An alpha channel never reaches it (:func:`convkit.backends.engine.apply` passes alpha
through). With ``channels = 3`` the net sees RGB jointly (it can learn colour-dependent filters); a
one-channel image is then replicated to three channels and the three outputs are averaged back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import functional as KF
from ..nn.modules import Filter

__all__ = ["ModelConfig", "LearnedFilter", "ARCHS", "ACTIVATIONS"]

ARCHS = ("residual", "linear")
ACTIVATIONS = ("relu", "leaky_relu", "prelu", "gelu", "silu", "tanh")
POOLS = (1, 2, 4)
# border modes that extend an image with its own pixels (a constant frame would teach the net
# about a frame that is not in the photo)
EXTEND_BORDERS = ("reflect", "symmetric", "replicate", "circular")


#: The ranges of the architecture's sizes, the same for ``convkit train`` and for model files
#: (a file that declares a width of a million is refused before any layer is built).
LIMITS = {"depth": (1, 64), "width": (1, 1024), "kernel": (1, 63)}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`LearnedFilter`; stored in the model file as plain data.

    Attributes:
        arch: ``residual`` or ``linear`` (see the module docstring).
        depth: number of conv layers of the residual net (>= 2); the linear net has 1.
        width: feature channels between the layers of the residual net.
        kernel: side of every conv kernel (odd, >= 1).
        pool: 1 (no pooling), 2 or 4: the body of the residual net runs at 1/pool resolution.
        activation: one of :data:`ACTIVATIONS`.
        channels: 1 = each image channel on its own (runs on any channel count);
            3 = RGB jointly.
        border: border mode that extends the image before the net (a convkit border name).
    """

    arch: str = "residual"
    depth: int = 5
    width: int = 32
    kernel: int = 3
    pool: int = 1
    activation: str = "relu"
    channels: int = 1
    border: str = "reflect"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"Invalid arch {self.arch!r}. Expected one of {', '.join(ARCHS)}")
        for name, (low, high) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValueError(f"{name} should be an integer in [{low}, {high}]. Got {v!r}")
        if self.arch == "residual" and self.depth < 2:
            raise ValueError(f"depth of a residual net should be >= 2. Got {self.depth}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel should be odd (the output is centred). Got {self.kernel}")
        if self.pool not in POOLS:
            raise ValueError(f"pool should be one of {POOLS}. Got {self.pool!r}")
        if self.pool > 1 and (self.arch != "residual" or self.depth < 3):
            raise ValueError("pool > 1 needs a residual net of depth >= 3 (a body to pool)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Invalid activation {self.activation!r}. Expected one of {', '.join(ACTIVATIONS)}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels should be 1 (per channel) or 3 (RGB). Got {self.channels}")
        if self.border not in EXTEND_BORDERS:
            raise ValueError(
                f"Invalid border {self.border!r}. Expected one of {', '.join(EXTEND_BORDERS)}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from stored data; unknown keys raise ValueError (a newer file)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line such as ``residual: 5 conv 3x3, width 32, relu, per channel``."""
        where = "per channel" if self.channels == 1 else "RGB jointly"
        if self.arch == "linear":
            return f"linear: 1 conv {self.kernel}x{self.kernel} + bias, {where}"
        pool = f", body pooled 1/{self.pool}" if self.pool > 1 else ""
        return (
            f"residual: {self.depth} conv {self.kernel}x{self.kernel}, width {self.width}, "
            f"{self.activation}{pool}, {where}"
        )


def _activation(name: str, width: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "prelu":
        return nn.PReLU(width, init=0.1)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU(inplace=True)
    return nn.Tanh()


class LearnedFilter(Filter):
    """A learned filter: float image in, float image of the same size out.

    The image is extended once by the border mode (``config.border``) by :attr:`reach` pixels,
    the net runs on the extended image and the centre is kept. So the output at a pixel depends
    on exactly ``reach`` pixels around it, like a fixed filter of that size with that border mode,
    and a tile filtered with a halo of ``reach`` equals that part of the whole image.

    Args:
        config: the architecture (:class:`ModelConfig`); keyword arguments override its fields.

    Shape:
        input (B, C, H, W) or (C, H, W) float, [0, 1] by convention; any C when
        ``channels == 1``, C in (1, 3) when ``channels == 3``. Output the same shape, unclamped.

    Attributes:
        reach: (top, bottom, left, right) pixels of context the output needs (all equal).
        tile_align: tiles must start at multiples of this (the pooling grid), 1 without pooling.

    >>> m = LearnedFilter(ModelConfig(arch="linear", kernel=3))
    >>> x = torch.rand(2, 3, 8, 8)
    >>> torch.allclose(m(x), x)  # a fresh linear model is the identity
    True
    """

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or ModelConfig()
        if overrides:
            cfg = ModelConfig(**{**cfg.to_dict(), **overrides})
        self.config = cfg
        c, w, k = cfg.channels, cfg.width, cfg.kernel
        r = k // 2
        if cfg.arch == "linear":
            self.conv = nn.Conv2d(c, c, k)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                for i in range(c):
                    self.conv.weight[i, i, r, r] = 1.0
            self._reach = r
            return
        # Without pooling the convs are 'valid' (no padding): each trims r pixels a side, and
        # the input's extension by depth * r is used up exactly. With pooling they zero-pad,
        # and the extension (the receptive field, rounded up to the pooling grid) keeps the
        # zeros' influence out of the centre that is kept.
        pad = 0 if cfg.pool == 1 else r
        self.head = nn.Sequential(nn.Conv2d(c, w, k, padding=pad), _activation(cfg.activation, w))
        body: list[nn.Module] = []
        for _ in range(cfg.depth - 2):
            body += [nn.Conv2d(w, w, k, padding=pad), _activation(cfg.activation, w)]
        self.body = nn.Sequential(*body)
        self.tail = nn.Conv2d(w, c, k, padding=pad)
        with torch.no_grad():
            # A small last layer starts the net near the identity (out = x + small residual),
            # which trains faster and more stably than a random filter.
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()
        if cfg.pool == 1:
            self._reach = cfg.depth * r
        else:
            p = cfg.pool
            # head + tail at full size; in the pooled body every conv reaches r pooled pixels
            # (p each); a pooling window spans p - 1 more and the bilinear upsampling one pooled
            # neighbour; one more pooled pixel keeps the body's zero padding out.
            n = 2 * r + p * ((cfg.depth - 2) * r + 2) + p - 1
            self._reach = -(-n // p) * p

    # --- what the rest of convkit reads -------------------------------------------------
    @property
    def reach(self) -> tuple[int, int, int, int]:
        n = self._reach
        return (n, n, n, n)

    @property
    def tile_align(self) -> int:
        return self.config.pool if self.config.arch == "residual" else 1

    @property
    def border(self) -> str:
        """The border mode that extends the image (read by the tiling code)."""
        return self.config.border

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def first_kernels(self) -> Tensor:
        """The first conv layer's weights (out, in, k, k), detached on the CPU."""
        conv = self.conv if self.config.arch == "linear" else self.head[0]
        return conv.weight.detach().float().cpu()

    def _own_spec(self) -> tuple[str, dict]:
        raise NotImplementedError(
            "this learned filter was not loaded from a file, so it has no spec string; "
            "save it with convkit.learn.save_model and load it with convkit.load_model"
        )

    def extra_repr(self) -> str:
        if self.spec_name is not None:
            return self.spec()
        return self.config.describe()

    # --- forward ------------------------------------------------------------------------
    def net(self, x: Tensor) -> Tensor:
        """The network on an image already extended by ``reach`` on every side.

        Shape: (N, channels, h + 2 reach, w + 2 reach) -> (N, channels, h, w). Training calls
        this on crops whose extension is real image context.
        """
        n = self._reach
        if self.config.arch == "linear":
            return self.conv(x)
        core = x[..., n:-n, n:-n] if n else x
        feat = self.head(x)
        if self.config.pool == 1:
            return core + self.tail(self.body(feat))
        p = self.config.pool
        hh, ww = feat.shape[-2:]
        low = self.body(F.avg_pool2d(feat, p, p, ceil_mode=True))
        # an exact factor p (not out/in sizes) keeps the sampling grid the same in every tile
        up = F.interpolate(low, scale_factor=p, mode="bilinear", align_corners=False)
        out = self.tail(feat + up[..., :hh, :ww])
        return core + out[..., n:-n, n:-n]

    def forward(self, x: Tensor) -> Tensor:
        x4, added = KF.check_image(x, "LearnedFilter input")
        b, c, h, w = x4.shape
        n = self._reach
        if self.config.channels == 1:
            x4 = x4.reshape(b * c, 1, h, w)
        elif c == 1:
            x4 = x4.expand(b, 3, h, w)
        elif c != 3:
            raise ValueError(
                f"this model was trained on RGB (channels=3); it runs on 1 or 3 channels. "
                f"Got {c} channels"
            )
        out = self.net(KF.pad(x4, n, n, n, n, border=self.config.border))
        if self.config.channels == 1:
            out = out.reshape(b, c, h, w)
        elif c == 1:
            out = out.mean(dim=1, keepdim=True)
        return out.squeeze(0) if added else out
