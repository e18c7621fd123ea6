"""Which Stable Diffusion a single file is, told from its tensors' shapes, and the configs that implies.

A CompVis single file holds weights but no configs. The public releases differ in ways the shapes show:

    text encoder   cond_stage_model.transformer.*  OpenAI CLIP ViT-L/14, 768 wide        SD 1.x
                   cond_stage_model.model.*        OpenCLIP ViT-H/14, 1024 wide          SD 2.x
    UNet conv_in   4 input channels                the latent                            text-to-image
                   9 input channels                latent + mask + masked-image latent   inpainting

What the shapes cannot show is SD 2.x's prediction type: the 512-pixel "base" models predict the noise ε,
the 768-pixel ones the velocity v. It comes from, in order: the caller (``prediction_type=``), the file's
own hints (a pickle's ``global_step`` of 875 000 is SD 2.0-base's, as diffusers also reads it; "base" in the
file name), else v-prediction with a warning that says how to change it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import LAYOUTS, OPENCLIP_PREFIX, StateDict, pickle_entry, tensor_specs
from .clip import CLIPTextConfig
from .unet import UNetConfig

CONV_IN = LAYOUTS["unet"].compvis_prefix + "input_blocks.0.0.weight"  # (C0, in_channels, 3, 3)
SD2_BASE_GLOBAL_STEP = 875_000  # the training step stored in SD 2.0-base's .ckpt

# SD 2.x's text encoder: OpenCLIP ViT-H/14 up to its penultimate layer (23 of 24), GELU, padded with "!".
SD2_TEXT = CLIPTextConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"
)
SD2_PAD_ID = 0  # "!"
# SD 2.x's UNet: heads of 64 channels (5, 10, 20, 20 per level), linear projections, 1024-wide context.
SD2_UNET = dict(attention_head_dim=[5, 10, 20, 20], use_linear_projection=True, cross_attention_dim=1024)
# The samplers the releases ship, as their scheduler_config.json says: SD 1.x and SD 2.x-base PNDM on ε
# (None: SD v1.5's file), SD 2.x-768 DDIM on v.
SD2_768_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False
)
SCHEDULERS = {
    "epsilon": ("pndm", None),
    "v_prediction": ("ddim", SD2_768_SCHEDULER | {"clip_sample": False, "prediction_type": "v_prediction"}),
}


@dataclass(frozen=True)
class Variant:
    family: str  # "SD1.x" or "SD2.x"
    inpainting: bool
    text_width: int

    def __str__(self) -> str:
        return self.family + (" inpainting" if self.inpainting else "")


def detect(specs: StateDict) -> Variant:
    """The variant of a single file's tensors (shapes only: ``tensor_specs`` reads no weights)."""
    sd2 = any(k.startswith(OPENCLIP_PREFIX) for k in specs)
    conv_in = specs.get(CONV_IN)
    return Variant("SD2.x" if sd2 else "SD1.x", conv_in is not None and conv_in.shape[1] == 9, 1024 if sd2 else 768)


def prediction_type(path: Path, variant: Variant, given: str | None = None) -> str:
    """ε or v for a single file (see the module docstring)."""
    if given is not None:
        if given not in SCHEDULERS:
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {given!r}")
        return given
    if variant.family == "SD1.x":
        return "epsilon"
    if path.suffix != ".safetensors" and pickle_entry(path, "global_step") == SD2_BASE_GLOBAL_STEP:
        return "epsilon"
    if re.search(r"base", path.name, re.IGNORECASE):
        return "epsilon"
    warnings.warn(
        f"{path.name}: SD 2.x file without a hint of its prediction type; assuming v-prediction (the 768-pixel "
        "models). For a 512-pixel base model pass prediction_type='epsilon' (--prediction-type epsilon)",
        stacklevel=3,
    )
    return "v_prediction"


@dataclass
class SingleFileConfigs:
    """What a single file of a given variant needs besides its weights."""

    text_encoder: CLIPTextConfig
    unet: UNetConfig
    pad_id: int | None
    scheduler: tuple[str, dict | None]  # make_scheduler's arguments


def network_configs(variant: Variant) -> tuple[CLIPTextConfig, UNetConfig]:
    """The text encoder's and the UNet's configs of a variant (its VAE is SD's in every variant)."""
    in_channels = 9 if variant.inpainting else 4
    if variant.family == "SD2.x":
        return SD2_TEXT, UNetConfig(in_channels=in_channels, **SD2_UNET)
    return CLIPTextConfig(), UNetConfig(in_channels=in_channels)


def configs_for(path: Path, given_prediction_type: str | None = None) -> tuple[Variant, SingleFileConfigs]:
    variant = detect(tensor_specs(path))
    pad_id = SD2_PAD_ID if variant.family == "SD2.x" else None
    scheduler = SCHEDULERS[prediction_type(path, variant, given_prediction_type)]
    return variant, SingleFileConfigs(*network_configs(variant), pad_id, scheduler)
