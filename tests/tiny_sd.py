"""Small random Stable Diffusion models built with diffusers/transformers, saved in both public layouts."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from minisd.checkpoints import OPENCLIP_PREFIX, text_encoder_to_openclip, unet_to_compvis, vae_to_compvis
from minisd.tokenizer import CLIPTokenizer
from minisd.unet import UNetConfig
from minisd.vae import VAEConfig

from .conftest import perturb_

TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
SD2_UNET = dict(use_linear_projection=True, attention_head_dim=[2, 4], upcast_attention=True)
VAE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=16,
)
# SD v1.5's scheduler/scheduler_config.json as published (written by diffusers 0.6). It has no timestep_spacing
# nor prediction_type: a scheduler class swapped in with from_config takes its own defaults for them, e.g.
# "linspace" for Euler, as it does for the real model.
SD15_SCHEDULER_FILE = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# The scheduler file of SD 2.x's 768-pixel v-prediction models (DDIM, written by diffusers 0.8).
SD2_SCHEDULER_FILE = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SCHEDULER_FILES = {f["_class_name"]: f for f in (SD15_SCHEDULER_FILE, SD2_SCHEDULER_FILE)}


def build_reference(seed: int = 0, sd2: bool = False, inpainting: bool = False):
    """A diffusers StableDiffusionPipeline with small, perturbed random networks and the real CLIP vocabulary.

    ``sd2``: shaped as SD 2.x instead: a gelu text encoder, padding with "!", linear projections and a head
    count per level in the UNet with upcast attention, and a v-prediction DDIM scheduler, as SD 2.1 ships.
    ``inpainting``: a 9-channel UNet (latent, mask, masked-image latent), as SD's inpainting checkpoints.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers import CLIPTokenizer as HFTokenizer

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT, hidden_act="gelu" if sd2 else "quick_gelu"))
    text_encoder = perturb_(text_encoder, seed).eval()
    unet_config = UNET | (SD2_UNET if sd2 else {}) | ({"in_channels": 9} if inpainting else {})
    unet = perturb_(UNet2DConditionModel(**unet_config), seed + 1, 0.05).eval()
    vae = perturb_(AutoencoderKL(**VAE), seed + 2, 0.05).eval()
    # As from_pretrained reads the published file (it calls from_config on it).
    scheduler = DDIMScheduler.from_config(SD2_SCHEDULER_FILE) if sd2 else PNDMScheduler.from_config(SD15_SCHEDULER_FILE)
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    CLIPTokenizer.from_openai_vocab().save(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = HFTokenizer.from_pretrained(folder, model_max_length=77, pad_token="!" if sd2 else "<|endoftext|>")
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def save_diffusers(pipe, folder: Path) -> Path:
    """``pipe`` saved as a model folder, its scheduler_config.json the published file its scheduler was built from.

    (save_pretrained would write every entry, defaults included, which no public SD file does.)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.save_pretrained(folder)
    published = SCHEDULER_FILES[type(pipe.scheduler).__name__]
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(published, indent=2) + "\n")
    return folder


def reference_scheduler(folder: Path, name: str):
    """The diffusers scheduler for sampler ``name`` (minisd's name), swapped in as diffusers' documentation does.

    That is ``Class.from_config(pipe.scheduler.config)``, where ``pipe.scheduler`` was loaded from the model folder
    by ``from_pretrained`` (as StableDiffusionPipeline.from_pretrained loads it).
    """
    import diffusers

    from minisd.schedulers import SCHEDULER_CLASSES

    class_name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    loaded = getattr(diffusers, class_name).from_pretrained(folder, subfolder="scheduler")
    swapped = {v: k for k, v in SCHEDULER_CLASSES.items()}[name]
    return getattr(diffusers, swapped).from_config(loaded.config)


def save_compvis_sd2(pipe, file: Path, suffix: str = ".safetensors") -> Path:
    """An SD 2.x-shaped ``pipe`` as an SD 2.x single file: the text encoder in OpenCLIP's layout, with what
    real SD 2.x files carry besides: one more (last) layer that SD 2.x never runs, text_projection and
    logit_scale."""
    text = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    n = pipe.text_encoder.config.num_hidden_layers
    g = torch.Generator().manual_seed(9)
    unused = {k.replace(f"layers.{n - 1}.", f"layers.{n}."): torch.randn(v.shape, generator=g)
              for k, v in text.items() if f"layers.{n - 1}." in k}  # fmt: skip
    openclip = text_encoder_to_openclip(text | unused)
    width = pipe.text_encoder.config.hidden_size
    openclip |= {"text_projection": torch.randn(width, width, generator=g), "logit_scale": torch.tensor(4.6)}
    state = {OPENCLIP_PREFIX + k: v for k, v in openclip.items()}
    state |= unet_to_compvis(pipe.unet.state_dict(), UNetConfig.from_dict(dict(pipe.unet.config)))
    state |= vae_to_compvis(pipe.vae.state_dict(), VAEConfig.from_dict(dict(pipe.vae.config)))
    state = {k: v.contiguous() for k, v in state.items()}
    file = file.with_suffix(suffix)
    if suffix == ".safetensors":
        save_file(state, file)
    else:
        torch.save({"state_dict": state, "global_step": 875_000}, file)
    return file


def save_compvis(pipe, file: Path) -> Path:
    """The three networks of ``pipe`` in one CompVis-layout file (SD1.x's key names, small shapes)."""
    state = {"cond_stage_model.transformer.text_model." + k: v for k, v in pipe.text_encoder.state_dict().items()}
    state |= unet_to_compvis(pipe.unet.state_dict(), UNetConfig.from_dict(dict(pipe.unet.config)))
    state |= vae_to_compvis(pipe.vae.state_dict(), VAEConfig.from_dict(dict(pipe.vae.config)))
    save_file({k: v.contiguous() for k, v in state.items()}, file)
    return file
