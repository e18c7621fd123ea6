"""The VAE: pixels ↔ latents. The decoder paints the picture once at the end; the encoder starts img2img.

Stable Diffusion denoises in the latent space of a KL-regularised autoencoder (Rombach et al. 2022, §3):
a 512×512×3 picture becomes a 64×64×4 latent, 48 times fewer numbers. The encoder halves the size three
times through ResNet blocks, a single-head self-attention block works at the smallest size, and a 1×1
conv gives the mean and log-variance of a diagonal Gaussian q(z|x) (Kingma & Welling 2014, §2.4). The
decoder mirrors it, up-sampling by nearest neighbour + conv.

**Latent scaling, in one place.** ``encode`` and ``decode`` work on the autoencoder's own latents. The UNet
was trained on latents multiplied by ``scaling_factor`` (0.18215 for SD1.x, chosen so that they have about
unit variance). The two methods ``scale_latents`` (VAE → UNet) and ``unscale_latents`` (UNet → VAE) are the
only places minisd applies it.

Module names follow ``diffusers.AutoencoderKL``; ``checkpoints.py`` maps the CompVis names.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from .checkpoints import load_component
from .config import JsonConfig
from .layers import Attention, ResnetBlock2D, Upsample2D

EPS = 1e-6  # every GroupNorm of the VAE


@dataclass
class VAEConfig(JsonConfig):
    """A diffusers ``vae/config.json``. The defaults are SD1.x's VAE (84M parameters)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    force_upcast: bool = True  # decode in fp32 when the model is fp16 (diffusers' default for this entry)
    down_block_types: list[str] = field(default_factory=lambda: ["DownEncoderBlock2D"] * 4)
    up_block_types: list[str] = field(default_factory=lambda: ["UpDecoderBlock2D"] * 4)

    FIXED: ClassVar[dict[str, Any]] = {
        "act_fn": "silu",
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }

    def __post_init__(self):
        n = len(self.block_out_channels)
        self.block_out_channels = list(self.block_out_channels)
        self.down_block_types, self.up_block_types = list(self.down_block_types), list(self.up_block_types)
        if self.down_block_types != ["DownEncoderBlock2D"] * n or self.up_block_types != ["UpDecoderBlock2D"] * n:
            raise ValueError(f"vae config: expected {n} DownEncoderBlock2D and {n} UpDecoderBlock2D blocks")


class SpatialSelfAttention(Attention):
    """Single-head self-attention over the pixels of a (B, C, H, W) map, with a GroupNorm and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, head_dim=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.group_norm(x), "b c h w -> b (h w) c")  # (B, HW, C)
        return x + rearrange(super().forward(tokens), "b (h w) c -> b c h w", h=h, w=w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    """Halve H and W: pad one row and column at the bottom/right only (SD's asymmetric padding), conv stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ResnetStack(nn.Module):
    """One level of the encoder or the decoder: n ResNet blocks, then the level's down- or up-sampler."""

    def __init__(self, cin: int, cout: int, n: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, EPS) for i in range(n))

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.resample(x)


class EncoderBlock(ResnetStack):
    def __init__(self, cin: int, cout: int, n: int, groups: int, downsample: bool):
        super().__init__(cin, cout, n, groups)
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None  # a list: downsamplers.0.*

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsamplers[0](x) if self.downsamplers else x


class DecoderBlock(ResnetStack):
    def __init__(self, cin: int, cout: int, n: int, groups: int, upsample: bool):
        super().__init__(cin, cout, n, groups)
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None  # a list: upsamplers.0.*

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsamplers[0](x) if self.upsamplers else x


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, 2·latent, H/8, W/8): mean and log-variance, stacked on the channels."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < n - 1) for i in range(n)
        )
        self.mid_block = MidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """(B, latent, h, w) -> (B, 3, 8h, 8w)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < n - 1) for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upward(self.middle(z))

    def middle(self, z: torch.Tensor) -> torch.Tensor:
        """The part at the latent's size: conv_in and the mid block (its attention sees every position)."""
        return self.mid_block(self.conv_in(z))

    def upward(self, x: torch.Tensor) -> torch.Tensor:
        """The up blocks and the output head: where the decoder's memory goes (its largest activations)."""
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def reach(self) -> int:
        """How many latent pixels beyond a tile's edge ``upward`` reads: each 3×3 conv reaches one pixel further
        at its own scale (the up blocks at 1, 2, 4, … pixels per latent pixel; an up-sampler's conv at the next)."""
        reach = 0.0
        for i, block in enumerate(self.up_blocks):
            reach += 2 * len(block.resnets) / 2**i + (1 / 2 ** (i + 1) if block.upsamplers else 0)
        return math.ceil(reach + 1 / 2 ** (len(self.up_blocks) - 1))  # + conv_out


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))). The log-variance is clamped to [−30, 20] as SD does."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, latent, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std·n, n ~ N(0, I) drawn on the generator's device (the reparameterisation trick)."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """``vae.encode(images)`` -> DiagonalGaussian; ``vae.decode(latents)`` -> images in [−1, 1]."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> what the UNet sees (× scaling_factor)."""
        return z * self.config.scaling_factor

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """What the UNet produced -> VAE latent (÷ scaling_factor)."""
        return z / self.config.scaling_factor

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, H, W) in [−1, 1], H and W divisible by 8 -> q(z|x) over (B, 4, H/8, W/8) latents."""
        return DiagonalGaussian(self.quant_conv(self.encoder(images.to(self.dtype))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) unscaled latents -> (B, 3, 8h, 8w) images, about [−1, 1] (not clamped).

        An fp16 model with ``force_upcast`` (true unless its config.json says false) decodes in fp32 and returns
        fp16: the decoder's last blocks reach large activations, and a VAE that leaves fp16's range of ±65504
        returns inf/NaN (SDXL's does; SD1.x/2.x's mostly stay inside). diffusers' SD1/SD2 pipelines decode in
        fp16, so fp16 pictures can differ from theirs in the last bits (the latents do not).
        """
        if self.dtype == torch.float16 and self.config.force_upcast:  # fp32 copies of the weights, for this call

            def fp32(module: nn.Module, *args):
                return functional_call(module, {k: v.float() for k, v in module.state_dict().items()}, args)

            return fp32(self.decoder, fp32(self.post_quant_conv, z.float())).half()
        return self.decoder(self.post_quant_conv(z.to(self.dtype)))

    def decode_tiled(self, z: torch.Tensor, tile: int = 64, overlap: int | None = None) -> torch.Tensor:
        """``decode`` with its full-size part run one latent tile of ``tile``² at a time: the same picture (to float
        rounding), with the peak memory of one tile's up path instead of the whole picture's.

        Two things tie a pixel to the rest of the picture. A 3×3 convolution near a tile's edge reads beyond it:
        each tile is decoded with ``overlap`` extra latent pixels on every side (default ``Decoder.reach``, the
        least that makes its inside exact), which are then cut off. And a GroupNorm normalises by statistics over
        the whole picture: those are gathered over all tiles first, one pass over the tiles per GroupNorm of the
        up path, each pass stopping at that norm (``_TileNorms``). So memory is bought with time: the passes add up
        to about half as many up-path decodes as it has GroupNorms (25 in SD's decoder). The latent-size part
        (conv_in and the mid block with its attention) runs on the whole latent: it is small.
        """
        if tile < 1 or (overlap is not None and overlap < 0):
            raise ValueError(f"tiles of {tile} latent pixels with a margin of {overlap}: use tile ≥ 1, overlap ≥ 0")
        if z.shape[-2] <= tile and z.shape[-1] <= tile:  # one tile: nothing to gather
            return self.decode(z)
        if self.dtype == torch.float16 and self.config.force_upcast:  # in fp32, as decode does (a copy of the VAE)
            return copy.deepcopy(self).float().decode_tiled(z.float(), tile, overlap).half()
        x = self.decoder.middle(self.post_quant_conv(z.to(self.dtype)))  # (B, C, h, w)
        h, w = x.shape[-2:]
        margin = self.decoder.reach() if overlap is None else overlap
        tiles = [_Tile(top, left, tile, margin, h, w) for top in range(0, h, tile) for left in range(0, w, tile)]
        norms = _TileNorms([m for m in (*self.decoder.up_blocks.modules(), self.decoder.conv_norm_out)
                            if isinstance(m, nn.GroupNorm)])  # fmt: skip
        with norms:
            while not norms.complete:  # gather the next GroupNorm's statistics over all tiles
                for t in tiles:
                    norms.run(self.decoder.upward, x[..., t.rows, t.cols], t)
                norms.finish_gathering()
            f = 2 ** (len(self.config.block_out_channels) - 1)  # pixels per latent pixel
            out = x.new_empty(len(x), self.config.out_channels, f * h, f * w)
            for t in tiles:
                piece = t.inside(norms.run(self.decoder.upward, x[..., t.rows, t.cols], t))  # (B, 3, f·height, f·width)
                out[..., f * t.top : f * (t.top + t.height), f * t.left : f * (t.left + t.width)] = piece
        return out

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode, sample, decode: a round trip through latent space."""
        return self.decode(self.encode(images).sample(generator))


@dataclass
class _Tile:
    """A latent tile: its own rows and columns, and the slice read to decode it (``margin`` more on each side)."""

    top: int
    left: int
    size: int
    margin: int
    h: int
    w: int

    def __post_init__(self):
        self.height, self.width = min(self.size, self.h - self.top), min(self.size, self.w - self.left)
        self.rows = slice(max(self.top - self.margin, 0), min(self.top + self.height + self.margin, self.h))
        self.cols = slice(max(self.left - self.margin, 0), min(self.left + self.width + self.margin, self.w))

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """The tile's own part of ``x``, an activation of the slice read (at any scale of the latent)."""
        f = x.shape[-2] // (self.rows.stop - self.rows.start)  # pixels per latent pixel at x's scale
        top, left = f * (self.top - self.rows.start), f * (self.left - self.cols.start)
        return x[..., top : top + f * self.height, left : left + f * self.width]


class _Stop(Exception):
    """Ends a gathering pass at the GroupNorm whose statistics it came for."""


class _TileNorms:
    """Forward hooks on GroupNorms that make a tiled decode normalise as the whole picture does.

    A pass runs one tile until the first norm whose statistics are not known yet: the known ones normalise with
    the whole picture's (mean, var) per sample and group; the next one adds its input's sums over the tile's
    own part, and stops the pass. ``finish_gathering`` turns the sums into that norm's statistics.
    """

    def __init__(self, norms: list[nn.GroupNorm]):
        self.norms, self.stats, self.handles = norms, [], []
        self.sums: list = [0, 0, 0]  # count, Σx, Σx² per sample and group, of the norm being gathered

    @property
    def complete(self) -> bool:
        return len(self.stats) == len(self.norms)

    def __enter__(self) -> _TileNorms:
        self.handles = [n.register_forward_hook(self.hook) for n in self.norms]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def run(self, up: Callable, x: torch.Tensor, tile: _Tile) -> torch.Tensor | None:
        """``up(x)`` for one tile: its output once every norm's statistics are known, else None."""
        self.calls, self.tile = 0, tile
        with contextlib.suppress(_Stop):  # a gathering pass ends at the norm being gathered
            return up(x)
        return None

    def hook(self, norm: nn.GroupNorm, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        x = inputs[0]
        if i < len(self.stats):  # (x − μ)/√(σ² + ε)·γ + β, with the whole picture's μ and σ², into GroupNorm's output
            mean, var = (s.to(x.dtype)[..., None, None, None] for s in self.stats[i])  # (B, G, 1, 1, 1)
            groups = rearrange(output, "b (g c) h w -> b g c h w", g=norm.num_groups)
            torch.sub(rearrange(x, "b (g c) h w -> b g c h w", g=norm.num_groups), mean, out=groups)
            groups.mul_(torch.rsqrt(var + norm.eps))
            return output.mul_(norm.weight[:, None, None]).add_(norm.bias[:, None, None])
        own = rearrange(self.tile.inside(x).double(), "b (g c) h w -> b g (c h w)", g=norm.num_groups)
        self.sums = [a + b for a, b in zip(self.sums, (own.shape[-1], own.sum(-1), own.pow(2).sum(-1)), strict=True)]
        raise _Stop

    def finish_gathering(self) -> None:
        n, total, squares = self.sums
        mean = total / n
        self.stats.append((mean, squares / n - mean**2))  # σ² = E[x²] − E[x]², in float64
        self.sums = [0, 0, 0]


def load_vae(
    path: str | Path,
    config: VAEConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """The VAE from a diffusers model folder (``vae/``) or a CompVis single file (SD1.x config assumed)."""
    return load_component("vae", path, AutoencoderKL, VAEConfig, config, dtype, device)
