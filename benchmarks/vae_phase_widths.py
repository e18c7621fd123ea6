"""`minisd train`'s VAE phase with other widths or depths, and what each VAE keeps: the cheaper VAEs measured
against the hour.

    python benchmarks/vae_phase_widths.py 16,32,64 [32,64,128,128 ...] [--steps 1500] [--seeds 4] [--noise 0.2]

Each argument is a VAE's ``block_out_channels``: three levels down-sample ×4 (the shipped 32,64,128), four ×8.
Each VAE is trained by the recipe's VAE phase alone (``Trainer.train_vae``: seed 0, the recipe's settings, only the
widths replaced), its scaling factor measured as the recipe does, and then read as ``benchmarks/vae_round_trips.py``
reads a VAE. Printed per VAE: the phase's minutes on this machine, the arithmetic of one of its steps
(``benchmarks/train_flops.py``'s count), and the round trips' row. Nothing is written.
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from train_flops import flops_of
from vae_round_trips import header, row

from minisd import shapes
from minisd import train as recipe
from minisd.train import Settings, Trainer, VAELoss


def trained_vae(channels: list[int], steps: int, out: Path) -> tuple[Trainer, float]:
    """The VAE phase at these widths: (its trainer, the phase's seconds)."""
    levels = len(channels)
    config = dataclasses.replace(
        recipe.VAE,
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    with mock.patch.object(recipe, "VAE", config):  # the Trainer builds its VAE from recipe.VAE
        trainer = Trainer(Settings(out, vae_steps=steps))
    start = time.perf_counter()
    trainer.train_vae()
    seconds = time.perf_counter() - start
    trainer.vae.config.scaling_factor = trainer.measure_scaling_factor()
    return trainer, seconds


def step_gflop(trainer: Trainer) -> float:
    """GFLOP of one VAE step at the recipe's batch, forward and backward."""
    s = trainer.s
    x, _ = shapes.batch(0, s.vae_batch)  # (32, 3, 64, 64)
    loss = VAELoss(trainer.vae, s.kl_weight, s.vae_edge_weight)
    return flops_of(lambda: loss(x, torch.Generator().manual_seed(0))) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("widths", nargs="+", help="block_out_channels, comma-separated: 16,32,64")
    parser.add_argument("--steps", type=int, default=Settings.vae_steps, help="VAE steps (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.2, help="latent noise, in units of the latents' spread")
    args = parser.parse_args()
    print(header(["VAE", "phase", "GFLOP a step"], args.noise))
    for widths in args.widths:
        channels = [int(c) for c in widths.split(",")]
        with tempfile.TemporaryDirectory() as out:
            trainer, seconds = trained_vae(channels, args.steps, Path(out))
        gflop = step_gflop(trainer)
        vae = trainer.vae.eval().requires_grad_(False)
        cells = row(vae, args.seeds, args.noise)
        print(f"| {widths}, {args.steps} steps | {seconds / 60:.1f} min | {gflop:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
