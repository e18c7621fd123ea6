"""How much of a picture survives the VAE? Held-out pictures through a VAE and back, read by the analyser.

Everything a UNet draws passes through the decoder, so what ``shapes.analyse`` still reads after a round trip
caps any UNet trained on that VAE. Each path is a model folder or a training state (``minisd train``'s
``train_state.pt``: its VAE, as far as training had got). One row each: the PSNR of 256 held-out pictures,
and the shapes read right after round trips of the held-out scenes (seeds 0 … seeds − 1), through the
posterior's mean and with Gaussian noise of ``--noise`` × the latents' spread added (a UNet's near miss).
The model card's VAE table comes from here.

    python benchmarks/vae_round_trips.py PATH [PATH ...] [--seeds 4] [--noise 0.2]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from eval_shapes import round_trips, vae_psnr

from minisd import load_pipeline
from minisd.train import VAE
from minisd.vae import AutoencoderKL


def load_vae(path: Path) -> AutoencoderKL:
    if path.is_dir():
        return load_pipeline(path).vae
    vae = AutoencoderKL(dataclasses.replace(VAE))
    vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["vae"])
    return vae.eval()


def header(first: list[str], noise: float) -> str:
    """The table's head: the ``first`` columns, then ``row``'s."""
    columns = [*first, "PSNR", "one shape: shape right", "two shapes: both right", f"the same, noise {noise}"]
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def row(vae: AutoencoderKL, seeds: int, noise: float) -> str:
    """A VAE's table cells: PSNR, then the shapes read right after round trips without and with latent noise."""
    cells = []
    for n in (0.0, noise):
        hits = round_trips(vae, seeds, n)
        cells += [f"{100 * sum(hits[k]) / len(hits[k]):.1f}%" for k in ("single shape", "pair both")]
    return f"{vae_psnr(vae):.2f} dB | {cells[0]} | {cells[1]} | {cells[2]} / {cells[3]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="model folders or train_state.pt files")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.2, help="latent noise, in units of the latents' spread")
    args = parser.parse_args()
    print(header(["VAE"], args.noise))
    for path in args.paths:
        print(f"| {path} | {row(load_vae(path), args.seeds, args.noise)} |", flush=True)


if __name__ == "__main__":
    main()
