"""``make demo``: one picture from a prompt, and the trace of its denoising, written to outputs/.

With a model in ``weights/`` (see weights/README.md) the picture is a real one. Without, the same
pipeline runs on a small Stable-Diffusion-shaped model with random weights: the picture is noise, but
every stage (tokenizer, CLIP, UNet + scheduler, VAE) runs and the trace shows the loop at work.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .clip import CLIPTextConfig, CLIPTextModel
from .pipeline import StableDiffusion, load_pipeline
from .schedulers import make_scheduler
from .tokenizer import load_tokenizer
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig


def random_small_model(seed: int = 0) -> StableDiffusion:
    """An untrained model with SD1.x's structure at a fraction of its width (1.7M parameters)."""
    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    )
    unet = UNet2DConditionModel(
        UNetConfig(
            sample_size=32,
            block_out_channels=[32, 64],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    )
    vae = AutoencoderKL(VAEConfig(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8))
    parts = [p.eval() for p in (text, unet, vae)]
    return StableDiffusion(load_tokenizer(), *parts, make_scheduler("pndm"))


def run_demo(prompt: str, out: Path, weights: Path | None, steps: int = 20) -> None:
    from .cli import save_atomically, trace_grid

    out.mkdir(parents=True, exist_ok=True)
    if weights is None:
        pipe = random_small_model()
        print("no model in weights/: running a small SD-shaped model with RANDOM weights (the picture is noise;")
        print("put Stable Diffusion weights in weights/ as weights/README.md says, for a real one)")
    else:
        pipe = load_pipeline(weights)
        print(f"model: {weights}")
    ids = pipe.tokenizer.encode(prompt)
    print(f"prompt: {prompt!r} -> {len(ids)} tokens: {ids}")
    start = time.perf_counter()
    result = pipe.text_to_image(prompt, steps=steps, seed=0, trace=True)
    seconds = time.perf_counter() - start
    save_atomically({out / "demo.png": result.images[0], out / "trace.png": trace_grid(result.trace, pipe)})
    size = result.images[0].size
    print(f"{steps} steps of {type(pipe.scheduler).__name__}, {size[0]}×{size[1]}, in {seconds:.1f} s")
    print(f"wrote {out / 'demo.png'} and {out / 'trace.png'} (per step: x_t above, predicted x0 below)")
