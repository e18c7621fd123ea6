"""How well does a model draw what the shapes world's held-out captions say? What a user sees, measured.

Every held-out caption (combinations training never drew, ``minisd.shapes.evaluation_scenes``) is generated
with the pipeline's defaults, once per seed, and each picture is read back by ``shapes.analyse``: the colour,
the shape and the position of what it drew. The VAE is measured on its own: PSNR of held-out pictures
encoded and decoded.

    python benchmarks/eval_shapes.py [--weights weights/minisd-tiny] [--seeds 4] [--grid grid.png]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections import defaultdict

import numpy as np
import torch

from minisd import load_pipeline, shapes
from minisd.viz import caption_grid


def training_scenes(n: int = 96, seed: int = 777) -> list[shapes.Scene]:
    """n scenes of combinations training draws: for choosing a setting without looking at the held-out ones."""
    rng = random.Random(seed)
    return [shapes.random_scene(rng) for _ in range(n)]


def score(scenes: list[shapes.Scene], images) -> dict[str, list[bool]]:
    """Each picture read back and checked against its scene: the hits per check ("single shape", "pair both", …)."""
    hits = defaultdict(list)
    for scene, image in zip(scenes, images, strict=True):
        kind = "single" if len(scene.shapes) == 1 else "pair"
        for check, ok in shapes.check(scene, shapes.analyse(image)).items():
            hits[f"{kind} {check}"].append(ok)
    return hits


def rates(hits: dict[str, list[bool]]) -> dict[str, float]:
    """The fraction of hits per check, checks in order."""
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def evaluate(pipe, seeds: int = 4, limit: int | None = None, scenes=None, **settings) -> tuple[dict, list]:
    """Accuracy per check over the held-out captions (or ``scenes``) × seeds, and the pictures of the first seed.
    ``settings`` go to ``text_to_image`` (none, to measure what a user sees)."""
    scenes = (scenes or shapes.evaluation_scenes())[:limit]
    captions = [s.caption for s in scenes]
    hits, first = defaultdict(list), []
    for seed in range(seeds):
        images = pipe.text_to_image(captions, seed=seed, progress=False, **settings).images
        first = first or images
        for check, ok in score(scenes, [np.asarray(image) for image in images]).items():
            hits[check] += ok
    return rates(hits), first


@torch.no_grad()
def through_vae(vae, x: torch.Tensor, noise: float = 0.0, generator=None, chunk: int = 64) -> torch.Tensor:
    """Pictures in [−1, 1] encoded (the posterior's mean, plus Gaussian noise of ``noise`` × the latents' spread: a
    UNet's near miss) and decoded: on the CPU, clamped to [−1, 1]."""
    device = next(vae.parameters()).device
    z = torch.cat([vae.encode(c.to(device)).mode() for c in x.split(chunk)])
    if noise:
        z = z + noise * z.std() * torch.randn(z.shape, generator=generator).to(device)
    return torch.cat([vae.decode(c).float().clamp(-1, 1).cpu() for c in z.split(chunk)])


@torch.no_grad()
def vae_psnr(vae, size: int = 64, n: int = 256) -> float:
    """PSNR (dB) of n held-out pictures through the VAE and back (the posterior's mean), pixels in [0, 1]."""
    x, _ = shapes.batch(seed=123_456, n=n, size=size, held_out=True)
    mse = ((through_vae(vae, x) - x) / 2).pow(2).mean()
    return float(10 * math.log10(1 / mse))


@torch.no_grad()
def round_trips(vae, seeds: int = 1, noise: float = 0.0) -> dict[str, list[bool]]:
    """The held-out scenes' pictures (seeds 0 … seeds − 1) through the VAE and back, read by ``shapes.analyse``:
    the hits per check. The latent is the posterior's mean plus Gaussian noise of ``noise`` × its spread, a
    UNet's near miss. What survives the trip caps any UNet trained on this VAE."""
    hits = defaultdict(list)
    for seed in range(seeds):
        scenes = shapes.evaluation_scenes(seed)
        x = torch.stack([shapes.draw(s) for s in scenes]) * 2 - 1  # draw: [0, 1]; the VAE: [−1, 1]
        y = through_vae(vae, x, noise, torch.Generator().manual_seed(seed)).add(1).div(2)
        for check, ok in score(scenes, list(y)).items():
            hits[check] += ok
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="model folder (default: minisd-tiny)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--limit", type=int, help="only the first N held-out captions (a smoke test)")
    parser.add_argument("--grid", help="write the first seed's pictures, captioned, to this PNG")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    pipe = load_pipeline(args.weights)
    start = time.perf_counter()
    accuracy, pictures = evaluate(pipe, args.seeds, args.limit)
    psnr = vae_psnr(pipe.vae, pipe.unet.config.sample_size * pipe.vae_scale)
    report = {
        "accuracy": accuracy,
        "vae_psnr_db": round(psnr, 2),
        "captions": len(pictures),
        "seeds": args.seeds,
        "scheduler": type(pipe.scheduler).__name__,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    for name, value in accuracy.items():
        print(f"{name:>16}: {100 * value:5.1f}%")
    print(f"{'VAE PSNR':>16}: {psnr:5.2f} dB")
    if args.grid:
        caption_grid(pictures, [s.caption for s in shapes.evaluation_scenes()[: len(pictures)]]).save(args.grid)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
