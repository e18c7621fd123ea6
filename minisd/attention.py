"""Scaled dot-product attention, the one operation every network of Stable Diffusion shares.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) V          (Vaswani et al. 2017, eq. 1)

Two paths compute it. ``F.scaled_dot_product_attention`` is PyTorch's fused kernel: fast, memory-lean,
and the default. The hand-written path spells the equation out and keeps the softmax weights, which is
what the notebooks read as attention maps. Tests check the two agree.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

_force_manual = False


@contextmanager
def manual_attention(enabled: bool = True):
    """Within this block every attention layer takes the hand-written path."""
    global _force_manual
    previous, _force_manual = _force_manual, enabled
    try:
        yield
    finally:
        _force_manual = previous


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, return_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q: (B, heads, Nq, d), k and v: (B, heads, Nk, d) -> (B, heads, Nq, d), and the weights if asked.

    ``causal`` lets query i see keys 0..i only (CLIP's text transformer reads left to right).
    The weights, (B, heads, Nq, Nk), sum to 1 over the keys.
    """
    if not (return_weights or _force_manual):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, Nq, Nk)
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, (weights if return_weights else None)
