"""Check minisd on a GPU: same seed, same picture as on the CPU; fp16 stays finite; how long a step takes.

    python benchmarks/device_check.py [--device cuda]

1. minisd-tiny (the shipped small model) generates on the CPU and on the device (TF32 off) from the
   same seed, in fp32, fp16 and bf16: the final latents must agree to the dtype's rounding, since the noise
   comes from a CPU generator either way. (Noise drawn in fp16 is not noise drawn in fp32 rounded: a seed
   gives another picture in another dtype, in diffusers as here.)
2. The full SD1.x networks (random weights) generate 512² on the device in fp32 and fp16: seconds per
   denoising step (one UNet call on a batch of 2, classifier-free guidance) and the VAE decode.
"""

from __future__ import annotations

import argparse
import time

import torch

from minisd.clip import CLIPTextModel
from minisd.pipeline import StableDiffusion, load_pipeline
from minisd.schedulers import make_scheduler
from minisd.tokenizer import load_tokenizer
from minisd.unet import UNet2DConditionModel
from minisd.vae import AutoencoderKL


def same_seed_across_devices(device: str) -> None:
    kw = dict(steps=20, seed=3, negative_prompt="blurry", guidance_scale=7.5, progress=False)
    for scheduler in ("ddim", "euler_ancestral", "dpmpp_2m"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            # The noise is drawn in the pipeline's dtype (as diffusers draws it): compare like with like.
            cpu = load_pipeline(None, "cpu", dtype).text_to_image("a red circle", scheduler=scheduler, **kw)
            dev = load_pipeline(None, device, dtype).text_to_image("a red circle", scheduler=scheduler, **kw)
            a, b = dev.latents.float().cpu(), cpu.latents.float()
            err = ((a - b).abs().max() / b.abs().max()).item()
            finite = bool(torch.isfinite(a).all())
            print(f"  {scheduler:16s} {dtype!s:15s} finite={finite}  max rel. diff vs the CPU in {dtype!s}: {err:.2e}")


def full_size_timing(device: str, steps: int = 10) -> None:
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        with torch.device(device):
            parts = [CLIPTextModel(), UNet2DConditionModel(), AutoencoderKL()]
        pipe = StableDiffusion(
            load_tokenizer(), *(p.to(dtype).eval() for p in parts), make_scheduler("pndm"), device, dtype
        )
        pipe.text_to_image("warm up", steps=2, progress=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = pipe.text_to_image("a photograph of an astronaut riding a horse", steps=steps, progress=False)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
        z = result.latents
        torch.cuda.synchronize()
        start = time.perf_counter()
        images = pipe.unet_latents_to_images(z)
        torch.cuda.synchronize()
        decode = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"  SD1.x 512², {dtype!s:14s} {steps} PNDM steps + decode: {total:.2f} s "
            f"(decode {decode:.3f} s, about {(total - decode) / (steps + 1):.3f} s per step); "
            f"picture finite: {bool(torch.isfinite(images).all())}; peak GPU memory {peak:.1f} GiB"
        )
        del pipe, parts
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("1. same seed on CPU and device (small random model, 20 steps, guidance 7.5):")
    same_seed_across_devices(args.device)
    print("2. full-size SD1.x networks, random weights:")
    full_size_timing(args.device)


if __name__ == "__main__":
    main()
