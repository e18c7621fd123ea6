"""Decode one 512² picture with the full SD1.x VAE, minisd against diffusers: time and peak memory.

    python benchmarks/vae_decode.py [--size 64] [--device cpu] [--dtype float32]

Each implementation runs in a fresh subprocess (so that one's allocations cannot hide the other's): it
builds the VAE with the same random weights, decodes once to warm up, then decodes again, measuring the
time and the peak memory growth of that decode.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch
from measure import peak_memory_mib, with_random_weights


def build(impl: str, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL as Reference

    from minisd.vae import AutoencoderKL

    with torch.device("meta"):
        ref = Reference(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    return with_random_weights(ref, AutoencoderKL, impl, device, dtype)


def child(args) -> None:
    dtype = getattr(torch, args.dtype)
    model = build(args.impl, args.device, dtype)
    z = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(args.device, dtype)

    def decode():
        with torch.no_grad():
            out = model.decode(z)
            return out.sample if args.impl == "diffusers" else out

    decode()
    start = time.perf_counter()
    mem = peak_memory_mib(decode, args.device)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": mem}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="latent height and width (64: 512² pixels)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return child(args)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"SD1.x VAE decode, latent 1×4×{args.size}×{args.size} -> {8 * args.size}², {args.dtype}, {args.device} "
        f"({machine}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    for impl in ("minisd", "diffusers"):
        cmd = [sys.executable, __file__, "--impl", impl, "--size", str(args.size)]
        cmd += ["--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"  {impl:9s} {r['seconds']:7.3f} s   peak memory of the decode: {r['peak_mib']:8.1f} MiB")


if __name__ == "__main__":
    main()
