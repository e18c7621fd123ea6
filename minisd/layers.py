"""The blocks the UNet and the VAE share: multi-head attention, the ResNet block, and 2× up-sampling.

Module and parameter names follow diffusers' (``to_q``, ``norm1``, ``conv_shortcut``, ...) so that public
weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attention


class Attention(nn.Module):
    """Multi-head attention of ``query_dim``-wide queries over ``context_dim``-wide keys and values.

    Self-attention when called without context (each pixel attends to all pixels), cross-attention with it.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        bias: bool = False,
        upcast: bool = False,
    ):
        super().__init__()
        inner, context_dim = heads * head_dim, context_dim or query_dim
        self.heads, self.upcast = heads, upcast
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        # A list of [Linear, Dropout(0.0)], as the checkpoints name the output projection to_out.0.* (the
        # dropout, a no-op at inference, only holds index 1).
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.keep_weights = False  # True: keep the last softmax weights in .weights (attention maps)
        self.weights: torch.Tensor | None = None
        self.query_chunk: int | None = None  # attend this many queries at a time (low memory; same result)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        dtype = q.dtype
        if self.upcast:  # scores in fp32: under fp16 they overflow for SD2.1
            q, k, v = q.float(), k.float(), v.float()
        if self.query_chunk and q.shape[-2] > self.query_chunk and not self.keep_weights:
            # Each query's output depends on its own scores only: chunks of queries give the same result with
            # a (B, heads, chunk, Nk) score matrix instead of (B, heads, Nq, Nk).
            out = torch.cat([attention(part, k, v)[0] for part in q.split(self.query_chunk, dim=-2)], dim=-2)
        else:
            out, self.weights = attention(q, k, v, return_weights=self.keep_weights)
        out = rearrange(out.to(dtype), "b h n d -> b n (h d)")
        return self.to_out[0](out)


class ResnetBlock2D(nn.Module):
    """GroupNorm → SiLU → conv, (+ timestep), GroupNorm → SiLU → conv, plus the input (He et al. 2016).

    ``temb_channels=None`` leaves out the timestep (the VAE's blocks). A 1×1 conv matches the input's width
    to the output's when they differ.
    """

    def __init__(self, cin: int, cout: int, temb_channels: int | None, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, cout) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.scale


class Upsample2D(nn.Module):
    """Double H and W (nearest neighbour, or to ``size`` exactly), then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:  # the size of the skip connection it meets next: odd latent sizes need it
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
