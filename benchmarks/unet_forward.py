"""Time one forward pass of the full SD1.x UNet, minisd against diffusers, with the same weights.

    python benchmarks/unet_forward.py [--size 64] [--batch 2] [--repeats 3] [--device cpu] [--dtype float32]

Latent 64×64 is a 512² picture; batch 2 is one step of classifier-free guidance. Runs alternate
(minisd, diffusers, minisd, ...) in one process so that both see the same machine state; the median is
reported. Peak memory is measured in a fresh subprocess per implementation: the growth of peak RSS
(CPU, sampled from /proc) or of torch's peak allocated memory (CUDA) during one forward, after the weights are loaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from measure import peak_memory_mib, with_random_weights


def build(impl: str, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel as Reference

    from minisd.unet import UNet2DConditionModel

    with torch.device("meta"):
        ref = Reference(
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    return with_random_weights(ref, UNet2DConditionModel, impl, device, dtype)


def inputs(args, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.size, args.size, generator=g).to(device, dtype)
    c = torch.randn(args.batch, 77, 768, generator=g).to(device, dtype)
    return x, torch.tensor([500] * args.batch, device=device), c


def forward(model, impl, x, t, c):
    with torch.no_grad():
        out = model(x, t, c)
        return out.sample if impl == "diffusers" else out


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(args) -> None:
    """Child process: print the peak memory growth of one forward of args.impl, in MiB."""
    dtype = getattr(torch, args.dtype)
    model = build(args.impl, args.device, dtype)
    x, t, c = inputs(args, args.device, dtype)
    print(json.dumps(peak_memory_mib(lambda: forward(model, args.impl, x, t, c), args.device)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="latent height and width (64: 512² pixels)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--impl", help=argparse.SUPPRESS)  # set in the memory subprocess
    args = p.parse_args()
    if args.impl:
        return peak_memory(args)

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    models = {impl: build(impl, args.device, dtype) for impl in ("minisd", "diffusers")}
    x, t, c = inputs(args, args.device, dtype)
    # Warm-up, and a check that both compute the same function.
    outs = {impl: forward(model, impl, x, t, c) for impl, model in models.items()}
    diff = (outs["minisd"] - outs["diffusers"]).abs().max().item()
    times: dict[str, list[float]] = {"minisd": [], "diffusers": []}
    for _ in range(args.repeats):
        for impl in ("minisd", "diffusers"):
            sync(args.device)
            start = time.perf_counter()
            forward(models[impl], impl, x, t, c)
            sync(args.device)
            times[impl].append(time.perf_counter() - start)
    del models

    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    print(
        f"SD1.x UNet forward, latent {args.batch}×4×{args.size}×{args.size}, {args.dtype}, {args.device} "
        f"({machine}, {torch.get_num_threads()} threads), torch {torch.__version__}; max |Δ| = {diff:.2e}"
    )
    for impl, ts in times.items():
        cmd = [sys.executable, __file__, "--impl", impl, "--size", str(args.size), "--batch", str(args.batch)]
        cmd += ["--device", args.device, "--dtype", args.dtype]
        mem = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(
            f"  {impl:9s} median {statistics.median(ts):7.3f} s  (runs: {', '.join(f'{s:.3f}' for s in ts)})"
            f"  peak memory of the forward: {mem:8.1f} MiB"
        )


if __name__ == "__main__":
    main()
