"""`minisd train`'s VAE phase with other widths or depths, and what each VAE keeps: the cheaper VAEs measured
against the hour.

    python benchmarks/vae_phase_widths.py 16,32,64 [32,64,128,128 ...] [--steps 1500] [--seeds 4] [--noise 0.2]

Each argument is a VAE's ``block_out_channels``: three levels down-sample ×4 (the shipped 32,64,128), four ×8.
Each VAE is trained by the recipe's VAE phase alone (``Trainer.train_vae``: seed 0, the recipe's settings, only the
widths replaced), then read as ``benchmarks/vae_round_trips.py`` reads a VAE. Printed per VAE: the phase's minutes
on this machine, the arithmetic of one of its steps (``benchmarks/train_flops.py``'s count), and the round trips'
row. Nothing is written.
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from unittest import mock

from train_flops import vae_step_flops
from vae_round_trips import header, row

from minisd import train as recipe
from minisd.train import Settings, Trainer


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
    return trainer, time.perf_counter() - start


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
        gflop = vae_step_flops(trainer) / 1e9
        vae = trainer.vae.eval().requires_grad_(False)
        cells = row(vae, args.seeds, args.noise)
        print(f"| {widths}, {args.steps} steps | {seconds / 60:.1f} min | {gflop:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
