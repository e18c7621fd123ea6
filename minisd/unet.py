"""The UNet: given a noisy latent x_t, the timestep t and the text vectors, predict the noise ε in x_t.

    ε_θ(x_t, t, text)                    (Ho et al. 2020, eq. 14; Rombach et al. 2022, eq. 2 with text)

The shape is the U of Ronneberger et al. 2015: an encoder half halves the latent's size level by level
(64 → 32 → 16 → 8 for 512² pictures) while widening it (320 → 640 → 1280 → 1280 channels), a middle block
works at the smallest size, and a decoder half mirrors the encoder, each level also reading what the
encoder wrote at the same size (the skip connections). Two inputs reach every block besides the latent:

* the **timestep**, as a sinusoidal embedding passed through an MLP, added inside every ResNet block;
* the **text**, read by **cross-attention** in the spatial-transformer blocks: every latent pixel asks
  (query) the 77 text vectors (keys, values) what to become.

Module names follow ``diffusers.UNet2DConditionModel`` so that the public diffusers weights load unchanged;
``checkpoints.py`` maps the CompVis names.

Three different epsilons, as the reference has them: ResNet and output GroupNorms use ``norm_eps`` (1e-5),
the spatial transformer's GroupNorm 1e-6, its LayerNorms 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .checkpoints import load_component, select_unet_weights
from .config import JsonConfig
from .layers import Attention, ResnetBlock2D, Upsample2D

CROSS_ATTN_DOWN, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_ATTN_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"


@dataclass
class UNetConfig(JsonConfig):
    """A diffusers ``unet/config.json``. The defaults are SD1.x's UNet (860M parameters)."""

    sample_size: int = 64  # the latent size it was trained at: 64 × 8 = 512 pixels
    in_channels: int = 4  # 9 for inpainting checkpoints (latent + mask + masked-image latent)
    out_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    down_block_types: list[str] = field(default_factory=lambda: [CROSS_ATTN_DOWN] * 3 + [DOWN])
    up_block_types: list[str] = field(default_factory=lambda: [UP] + [CROSS_ATTN_UP] * 3)
    layers_per_block: int = 2
    cross_attention_dim: int = 768  # width of the text vectors (1024 for SD2.x's OpenCLIP)
    # Diffusers' historical misnomer: in SD1 configs `attention_head_dim` holds the NUMBER of heads (8), and the
    # width of one head is channels / heads. `num_attention_heads`, when given, wins. Either may be per level.
    attention_head_dim: int | list[int] = 8
    num_attention_heads: int | list[int] | None = None
    transformer_layers_per_block: int | list[int] = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False  # SD2.x: proj_in/proj_out are Linear, not 1×1 convs
    upcast_attention: bool = False  # SD2.1: compute attention scores in fp32 under fp16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    mid_block_scale_factor: float = 1.0

    # Entries that are accepted only at the value SD uses: anything else is a different network.
    FIXED: ClassVar[dict[str, Any]] = {
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "class_embed_type": None,
        "num_class_embeds": None,
        "addition_embed_type": None,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "time_embedding_act_fn": None,
        "timestep_post_act": None,
        "time_cond_proj_dim": None,
        "resnet_time_scale_shift": "default",
        "resnet_skip_time_act": False,
        "resnet_out_scale_factor": 1.0,
        "dual_cross_attention": False,
        "only_cross_attention": False,
        "mid_block_only_cross_attention": None,
        "cross_attention_norm": None,
        "attention_type": "default",
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "projection_class_embeddings_input_dim": None,
        "addition_time_embed_dim": None,
        "reverse_transformer_layers_per_block": None,
    }
    # Entries with no effect on inference.
    IGNORED: ClassVar[frozenset[str]] = frozenset({"dropout", "addition_embed_type_num_heads"})

    def __post_init__(self):
        for name in ("block_out_channels", "down_block_types", "up_block_types"):
            setattr(self, name, list(getattr(self, name)))  # JSON gives lists, Python callers often tuples
        for name in ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"unet config: {n} block_out_channels but down/up block types of another length")
        for kind in (*self.down_block_types, *self.up_block_types):
            if kind not in (CROSS_ATTN_DOWN, DOWN, CROSS_ATTN_UP, UP):
                raise ValueError(f"unet config: block type {kind!r} is not one of SD's UNet blocks")
        if not isinstance(self.cross_attention_dim, int):
            raise ValueError("unet config: a cross_attention_dim per level is not supported")

    def per_level(self, value) -> list:
        return list(value) if isinstance(value, list | tuple) else [value] * len(self.block_out_channels)

    @property
    def heads(self) -> list[int]:
        return self.per_level(self.num_attention_heads or self.attention_head_dim)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, eq. 6): one projection to twice the width, half gates the other."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # [GEGLU, Dropout(0.0), Linear]: the no-op dropout only holds index 1, so the checkpoints' ff.net.2.* is
        # the second projection.
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LN transformer block on the pixels: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """The spatial transformer: a (B, C, H, W) feature map as H·W tokens, through transformer blocks, back."""

    def __init__(self, channels: int, heads: int, cfg: UNetConfig, depth: int):
        super().__init__()
        self.linear = cfg.use_linear_projection
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        proj = (lambda: nn.Linear(channels, channels)) if self.linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, channels // heads, cfg.cross_attention_dim, cfg.upcast_attention)
            for _ in range(depth)
        )
        self.proj_out = proj()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        residual, x = x, self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")  # (B, HW, C): one token per pixel
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear:
            x = self.proj_out(x)
        return x + residual


class Downsample2D(nn.Module):
    """Halve H and W with a stride-2 3×3 conv (odd sizes round up)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0) -> torch.Tensor:
    """Sinusoidal features of t (Vaswani et al. 2017, §3.5, with t as the position): (B,) -> (B, dim).

    Frequencies 10000^(−i/(dim/2 − shift)) for i < dim/2; SD puts the cosines first (flip_sin_to_cos).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    sin, cos = angles.sin(), angles.cos()
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class DownBlock(nn.Module):
    """One encoder level: ResNet blocks (each followed by a spatial transformer if ``attn``), then halve."""

    def __init__(self, cin, cout, temb, cfg: UNetConfig, attn, heads, depth, downsample):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(
            ResnetBlock2D(cin if i == 0 else cout, cout, temb, cfg.norm_num_groups, cfg.norm_eps) for i in range(n)
        )
        if attn:
            self.attentions = nn.ModuleList(Transformer2DModel(cout, heads, cfg, depth) for _ in range(n))
        self.has_attn = attn
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])
        self.has_down = downsample

    def forward(self, x, temb, context, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.has_attn:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.has_down:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """One decoder level: ResNet blocks that each first concatenate an encoder skip, then double."""

    def __init__(self, cin_prev, cout, skip_channels: list[int], temb, cfg: UNetConfig, attn, heads, depth, upsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D((cin_prev if i == 0 else cout) + s, cout, temb, cfg.norm_num_groups, cfg.norm_eps)
            for i, s in enumerate(skip_channels)
        )
        if attn:
            self.attentions = nn.ModuleList(Transformer2DModel(cout, heads, cfg, depth) for _ in skip_channels)
        self.has_attn = attn
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])
        self.has_up = upsample

    def forward(self, x, temb, context, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)  # (B, C + C_skip, H, W)
            if self.has_attn:
                x = self.attentions[i](x, context)
        if self.has_up:
            x = self.upsamplers[0](x, size=skips[-1].shape[-2:])
        return x


class MidBlock(nn.Module):
    """ResNet, spatial transformer, ResNet, at the smallest size."""

    def __init__(self, channels, temb, cfg: UNetConfig, heads, depth):
        super().__init__()
        g, eps, s = cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, temb, g, eps, s) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(channels, heads, cfg, depth)])

    def forward(self, x, temb, context) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet2DConditionModel(nn.Module):
    """``unet(latents, t, context)``: (B, 4, h, w), scalar or (B,) timesteps, (B, 77, 768) -> ε (B, 4, h, w)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
        heads, depth = cfg.heads, cfg.per_level(cfg.transformer_layers_per_block)
        temb = ch[0] * 4

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            cin = ch[i - 1] if i else ch[0]
            attn = kind == CROSS_ATTN_DOWN
            self.down_blocks.append(DownBlock(cin, ch[i], temb, cfg, attn, heads[i], depth[i], i < n - 1))

        self.mid_block = MidBlock(ch[-1], temb, cfg, heads[-1], depth[-1])

        # Channels of the skips, in the order the encoder pushes them; the decoder pops from the end.
        skip_channels = [ch[0]]
        for i in range(n):
            skip_channels += [ch[i]] * cfg.layers_per_block + ([ch[i]] if i < n - 1 else [])
        self.up_blocks = nn.ModuleList()
        rch, rheads, rdepth = ch[::-1], heads[::-1], depth[::-1]
        for i, kind in enumerate(cfg.up_block_types):
            mine = [skip_channels.pop() for _ in range(cfg.layers_per_block + 1)]
            cin_prev = rch[i - 1] if i else rch[0]
            attn = kind == CROSS_ATTN_UP
            self.up_blocks.append(UpBlock(cin_prev, rch[i], mine, temb, cfg, attn, rheads[i], rdepth[i], i < n - 1))

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int, context: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        features = timestep_features(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(features.to(x.dtype))  # (B, 4·C0)

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x = block(x, temb, context, skips)
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            x = block(x, temb, context, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def keep_attention_maps(self, enabled: bool = True) -> None:
        """Make every cross-attention layer keep its softmax weights (taking the hand-written path)."""
        for module in self.modules():
            if isinstance(module, BasicTransformerBlock):
                module.attn2.keep_weights = enabled

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """The kept cross-attention maps by layer name: (B, heads, H·W, 77) each, summing to 1 over tokens."""
        return {
            name: module.attn2.weights
            for name, module in self.named_modules()
            if isinstance(module, BasicTransformerBlock) and module.attn2.weights is not None
        }


def load_unet(
    path: str | Path,
    config: UNetConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    ema: bool | None = None,
) -> UNet2DConditionModel:
    """The UNet from a diffusers model folder (``unet/``) or a CompVis single file.

    ``ema``: for a single file that holds both the trained and the EMA weights, which to use. None (default):
    EMA when present, as inference wants; True: EMA or an error; False: the trained weights.
    """
    return load_component(
        "unet", path, UNet2DConditionModel, UNetConfig, config, dtype, device, lambda s: select_unet_weights(s, ema)
    )
