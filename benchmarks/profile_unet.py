"""Where the time of one SD1.x UNet forward goes (512², batch 2), by operator: torch.profiler's table.

python benchmarks/profile_unet.py [--dtype bfloat16] [--channels-last] [--rows 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import SD1_UNET

import minisd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    unet = minisd.UNet2DConditionModel(minisd.UNetConfig.from_dict(SD1_UNET)).eval().to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g).to(dtype)
    if args.channels_last:
        unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    c, t = torch.randn(2, 77, 768, generator=g).to(dtype), torch.tensor([500, 500])
    with torch.no_grad():
        unet(x, t, c)  # warm-up
        with profile() as prof:
            unet(x, t, c)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
