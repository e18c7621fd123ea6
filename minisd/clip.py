"""The CLIP text transformer: 77 token ids in, 77 vectors out (768 wide in SD1.x).

Stable Diffusion uses the text tower of OpenAI's CLIP ViT-L/14 (SD1.x) or OpenCLIP ViT-H/14 (SD2.x).
It is a GPT-style transformer (Radford et al. 2021, §2.4): token and learned position embeddings, then
pre-LayerNorm blocks of causal self-attention and an MLP, then a final LayerNorm. SD does not use CLIP's
pooled, projected sentence vector: the UNet cross-attends to all 77 per-token vectors.

Module names follow ``transformers.CLIPTextModel`` as the public SD checkpoints store it
(``text_model.encoder.layers.0.self_attn.q_proj.weight``...), so those load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attention
from .checkpoints import JsonConfig, load_component


@dataclass
class CLIPTextConfig(JsonConfig):
    """The fields of a transformers ``text_encoder/config.json`` that shape the network. Default: SD1.x."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"  # SD1.x (OpenAI CLIP); SD2.x's OpenCLIP uses "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702x): the sigmoid approximation of GELU that OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPAttention(nn.Module):
    """Multi-head causal self-attention: each token sees itself and the tokens before it."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        width = cfg.hidden_size
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)
        self.keep_weights = False  # set True to keep the last attention map in .weights
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            rearrange(p(x), "b n (h d) -> b h n d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out, self.weights = attention(q, k, v, causal=True, return_weights=self.keep_weights)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, 77, width)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Position ids are always 0..n-1 as int64. Checkpoints that store them (some as floats) are ignored.
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)  # (B, 77, width)


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """The text encoder. ``model(ids)``: (B, 77) int64 -> (B, 77, width)."""

    def __init__(self, config: CLIPTextConfig | None = None):
        super().__init__()
        self.config = config or CLIPTextConfig()
        self.text_model = CLIPTextTransformer(self.config)

    def forward(self, ids: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Hidden state after layer ``layer`` (−1: the last, −2: one before, "clip skip"), final LayerNorm applied."""
        layers = self.text_model.encoder.layers
        n = len(layers) + layer + 1 if layer < 0 else layer
        if not 1 <= n <= len(layers):
            raise ValueError(f"layer {layer} does not exist: the text encoder has {len(layers)} layers")
        x = self.text_model.embeddings(ids)
        for block in layers[:n]:
            x = block(x)
        return self.text_model.final_layer_norm(x)


def load_text_encoder(
    path: str | Path,
    config: CLIPTextConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CLIPTextModel:
    """The CLIP text encoder from a diffusers model folder (``text_encoder/``) or a CompVis single file.

    A single file holds no config: SD1.x's is assumed unless ``config`` is given.
    """
    return load_component("text_encoder", path, CLIPTextModel, CLIPTextConfig, config, dtype, device)
