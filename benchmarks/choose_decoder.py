"""Which decoder fine-tune (phase 4 of ``minisd train``) makes the UNet's pictures right most often?

The model's UNet draws latents for training captions once (its pipeline defaults, seeds 0–1; ``--guidance``
to draw them at another scale). Each candidate
fine-tunes the decoder of a training state whose UNet phase has finished (``train.Trainer.train_decoder``,
the code ``minisd train`` runs) and decodes those same latents; the pictures are read back by
``shapes.analyse``. Also measured: the VAE's PSNR on held-out pictures, and round trips (held-out pictures
through the VAE and back, read by the analyser). The model card's decoder table comes from here.

    python benchmarks/choose_decoder.py --state DIR/train_state.pt --weights DIR

``--state``: the training state as the UNet phase left it (phase "decoder", step 0), which ``minisd train``
writes when that phase ends (copy it before the decoder phase's first save, at step 250). It is only read:
each candidate starts from a copy in a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from eval_shapes import round_trips, score, training_scenes, vae_psnr

from minisd import load_pipeline
from minisd.train import Settings, Trainer

# (latent noise in units of the latents' spread, steps, learning rate); 0 steps: the decoder of phase 1
CANDIDATES = [(0.0, 0, 0.0), (0.1, 300, 3e-4), (0.3, 300, 3e-4), (0.5, 300, 3e-4), (0.3, 300, 1e-3), (0.3, 600, 3e-4)]


def fine_tuned_vae(state: Path, noise: float, steps: int, lr: float):
    """The VAE of ``state`` after a decoder phase of ``steps`` steps (none for 0)."""
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(state, Path(folder) / "train_state.pt")
        settings = Settings(Path(folder), decoder_steps=steps, decoder_lr=lr, decoder_noise=noise, save_every=10**9)
        trainer = Trainer(settings)
        trainer.load_state()
        trainer.phase, trainer.step = "decoder", 0
        trainer.train_decoder()
    return trainer.vae.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="a train_state.pt whose UNet phase has finished")
    parser.add_argument("--weights", required=True, help="the model folder that training state exported")
    parser.add_argument("--guidance", type=float, help="guidance scale of the UNet's latents (default: the model's)")
    args = parser.parse_args()
    pipe = load_pipeline(args.weights)
    scenes = training_scenes()
    captions = [s.caption for s in scenes]
    draw = dict(guidance_scale=args.guidance, progress=False)
    latents = [pipe.text_to_image(captions, seed=seed, **draw).latents for seed in (0, 1)]
    print("| decoder fine-tune | VAE PSNR | one shape: shape right | both shapes right | round trips: shape right |")
    print("|---|---|---|---|---|")
    for noise, steps, lr in CANDIDATES:
        start = time.perf_counter()
        pipe.vae = fine_tuned_vae(Path(args.state), noise, steps, lr)
        with torch.no_grad():
            drawn = [np.asarray(i) for z in latents for i in pipe.to_pil(pipe.unet_latents_to_images(z))]
        hits, trips = score(scenes * 2, drawn), round_trips(pipe.vae)
        cells = [hits["single shape"], hits["pair both"], trips["single shape"]]
        row = " | ".join(f"{100 * sum(c) / len(c):.1f}%" for c in cells)
        name = f"noise {noise}, {steps} steps, lr {lr:g}" if steps else "none"
        print(f"| {name} | {vae_psnr(pipe.vae):.2f} dB | {row} |  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
