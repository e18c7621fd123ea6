"""How far bf16 pictures are from fp32 ones: the same seeds on the shipped model, PSNR of the decoded pictures.

python benchmarks/bf16_quality.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import math

import torch

from minisd import load_pipeline
from minisd.demo import CAPTIONS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    pipes = {dtype: load_pipeline(dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    psnrs = []
    for seed in range(args.seeds):
        pictures = {}
        for dtype, pipe in pipes.items():
            result = pipe.text_to_image(list(CAPTIONS), seed=seed, progress=False)
            pictures[dtype] = pipe.unet_latents_to_images(result.latents.to(dtype)).float()
        mse = (pictures[torch.float32] - pictures[torch.bfloat16]).pow(2).mean((1, 2, 3))
        psnrs += [10 * math.log10(1 / max(float(m), 1e-12)) for m in mse]
    print(
        f"bf16 vs fp32, minisd-tiny, {len(psnrs)} pictures: PSNR median {sorted(psnrs)[len(psnrs) // 2]:.1f} dB, "
        f"lowest {min(psnrs):.1f} dB"
    )


if __name__ == "__main__":
    main()
