"""minisd: Stable Diffusion written from scratch, to read, step through and check against the reference.

Three models and a loop:

    prompt --tokenizer.py--> ids --clip.py--> (B, 77, 768) ─┐
    noise (B, 4, 64, 64) --[unet.py + schedulers.py] x N steps--> latent --vae.py--> image (B, 3, 512, 512)

``checkpoints.py`` is the one place that knows how the public weights are laid out.
"""

from .checkpoints import CheckpointError
from .clip import CLIPTextConfig, CLIPTextModel, load_text_encoder
from .pipeline import Result, StableDiffusion, TraceStep, load_pipeline
from .schedulers import SCHEDULERS, make_scheduler
from .tokenizer import CLIPTokenizer, load_tokenizer
from .unet import UNet2DConditionModel, UNetConfig, load_unet
from .vae import AutoencoderKL, VAEConfig, load_vae

__all__ = [
    "SCHEDULERS",
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTokenizer",
    "CheckpointError",
    "Result",
    "StableDiffusion",
    "TraceStep",
    "UNet2DConditionModel",
    "UNetConfig",
    "VAEConfig",
    "load_pipeline",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
    "make_scheduler",
]
__version__ = "0.1.0"
