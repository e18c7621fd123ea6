"""Floating-point operations of `minisd train`: one step of each phase, and the whole recipe.

    python benchmarks/train_flops.py [--unet-steps 3200] [--gflops 265]

Counts the matrix products and convolutions of one training step (forward and backward) of each phase at the
recipe's batch sizes (``torch.utils.flop_counter``; element-wise work is not counted), then multiplies by the
phase's steps. With ``--gflops`` (the rate a machine sustains: a phase's FLOPs a step over its seconds a step from
``benchmarks/train_step_times.py``) it also prints the minutes that rate needs: a recipe fits an hour of a machine
only if its FLOPs do.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from minisd import shapes
from minisd.attention import manual_attention
from minisd.train import DecoderLoss, LatentPool, NoisePrediction, Settings, Trainer, VAELoss, eps_loss


def flops_of(step) -> int:
    """FLOPs of ``step()``'s loss, forward and backward."""
    with FlopCounterMode(display=False) as counter, manual_attention():
        step().backward()
    return counter.get_total_flops()


def vae_step_flops(trainer: Trainer) -> int:
    """FLOPs of one step of the VAE phase at the recipe's batch, forward and backward."""
    s = trainer.s
    x, _ = shapes.batch(0, s.vae_batch)  # (32, 3, 64, 64)
    loss = VAELoss(trainer.vae, s.kl_weight, s.vae_edge_weight)
    return flops_of(lambda: loss(x, torch.Generator().manual_seed(0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for phase in ("vae", "unet", "decoder"):
        parser.add_argument(f"--{phase}-steps", type=int, help=f"default: Settings.{phase}_steps")
    parser.add_argument("--gflops", type=float, help="a machine's sustained rate, for the minutes it implies")
    args = parser.parse_args()
    steps = {f"{k}_steps": v for k in ("vae", "unet", "decoder") if (v := getattr(args, f"{k}_steps")) is not None}
    with tempfile.TemporaryDirectory() as out:  # the networks only: nothing is written there
        s = Settings(Path(out), **steps)
        trainer = Trainer(s)
    vae_step = vae_step_flops(trainer)
    x, _ = shapes.batch(0, s.vae_batch)  # (32, 3, 64, 64)
    generator = torch.Generator().manual_seed(0)
    trainer.vae.requires_grad_(False)
    pool = LatentPool(trainer.vae, lambda i: i, s.batch, trainer.device)
    z0, captions = pool.sample(s.batch, generator)  # (64, 4, 16, 16)
    ids = trainer.tokenizer(captions)  # (64, 77)
    model = NoisePrediction(trainer.text_encoder, trainer.unet)
    unet_step = flops_of(lambda: eps_loss(model, trainer.scheduler, ids, z0, generator))
    for p in trainer.decoder_parameters():
        p.requires_grad_(True)
    decoder_step = flops_of(lambda: DecoderLoss(trainer.vae, s.decoder_noise)(x, generator))
    rows = [
        ("VAE", vae_step, s.vae_steps),
        ("UNet", unet_step, s.unet_steps),
        ("decoder", decoder_step, s.decoder_steps),
    ]
    total = sum(f * n for _, f, n in rows)
    print(f"{'phase':8} {'GFLOP a step':>13} {'steps':>6} {'TFLOP':>7}")
    for name, f, n in rows:
        print(f"{name:8} {f / 1e9:13.1f} {n:6d} {f * n / 1e12:7.1f}")
    print(f"{'all':8} {'':13} {'':6} {total / 1e12:7.1f}")
    if args.gflops:
        print(f"at {args.gflops:g} GFLOP/s: {total / args.gflops / 1e9 / 60:.1f} min (the latent pool not counted)")


if __name__ == "__main__":
    main()
