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
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attention
from .checkpoints import load_component
from .config import JsonConfig


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

    # Entries of a transformers config.json with no effect on the text encoder's numbers: token ids and the
    # projection (used by CLIP's image-text head, not by SD), dropout (off at inference), and the generic
    # entries older transformers versions wrote into every config.
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        """
        architectures model_type transformers_version dtype torch_dtype bos_token_id eos_token_id
        pad_token_id projection_dim attention_dropout dropout initializer_factor initializer_range
        return_dict output_hidden_states output_attentions torchscript use_bfloat16 tf_legacy_loss
        pruned_heads tie_word_embeddings is_encoder_decoder is_decoder cross_attention_hidden_size
        add_cross_attention tie_encoder_decoder max_length min_length do_sample early_stopping num_beams
        num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
        length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
        chunk_size_feed_forward output_scores return_dict_in_generate forced_bos_token_id
        forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
        begin_suppress_tokens finetuning_task id2label label2id tokenizer_class prefix sep_token_id
        decoder_start_token_id task_specific_params problem_type gradient_checkpointing
        """.split()  # noqa: SIM905 (a list of words)
    )

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


def embedding(n: int, width: int) -> nn.Embedding:
    """nn.Embedding with its N(0, 1) init, drawn only off the meta device: ``load_component`` builds models on
    meta, where ``normal_`` alone imports torch._dynamo, a second of every cold start (measured)."""
    weight = torch.empty(n, width)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(n, width, _weight=weight)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = embedding(cfg.max_position_embeddings, cfg.hidden_size)

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
