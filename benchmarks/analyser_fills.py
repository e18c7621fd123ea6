"""Where does the analyser draw the line between a circle and a square? The world's own pictures tell.

``shapes.analyse`` reads a shape from how much of its bounding box it fills (a disc π/4 ≈ 0.785, a square 1,
a triangle ½) and takes the nearest: a circle below 0.893, a square above. This prints that fill for pictures
of one shape drawn by ``shapes.draw`` (no model), and for the same pictures sent through a model's VAE and
back (edges as the decoder draws them, and it draws every generated picture): how many the analyser
reads wrong, and where a line would read most circles and squares right. A generated picture's own fill is
``shapes.analyse(picture)[0].fill``.

    python benchmarks/analyser_fills.py [--weights DIR] [--n 3000]
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from eval_shapes import through_vae

from minisd import load_pipeline, shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="model folder whose VAE makes the round trips (default: minisd-tiny)")
    parser.add_argument("--n", type=int, default=3000, help="training scenes drawn; those of one shape are kept")
    args = parser.parse_args()
    rng = random.Random(123)
    scenes = [s for s in (shapes.random_scene(rng) for _ in range(args.n)) if len(s.shapes) == 1]
    drawn = torch.stack([shapes.draw(s) for s in scenes])  # (N, 3, 64, 64) in [0, 1]
    vae = load_pipeline(args.weights).vae
    trips = through_vae(vae, drawn * 2 - 1).add(1).div(2)  # the VAE works in [−1, 1]
    line = (shapes.FILL["circle"] + shapes.FILL["square"]) / 2
    print(f"circle | square line at fill {line:.3f}; {len(scenes)} pictures of one shape")
    print("| pictures | shape | n | fill 1% / 5% / median / 95% / 99% / max | read wrong |\n|---|---|---|---|---|")
    best = {}
    for name, pictures in (("drawn", drawn), ("VAE round trip", trips)):
        by_kind = {}
        for kind in shapes.SHAPES:
            picked = [i for i, s in enumerate(scenes) if s.shapes[0].shape == kind]
            found = [shapes.analyse(pictures[i])[:1] for i in picked]  # [] where nothing is saturated enough
            by_kind[kind] = np.array([f[0].fill for f in found if f])
            values = np.percentile(by_kind[kind], [1, 5, 50, 95, 99, 100])
            wrong = sum(not f or f[0].shape != kind for f in found)
            print(f"| {name} | {kind} | {len(picked)} | {' / '.join(f'{v:.3f}' for v in values)} | {wrong} |")
        # Circles and squares on the wrong side of a line at each candidate fill: the fewest, and where.
        lines = np.arange(800, 1001) / 1000  # 0.800, 0.801, … 1.000
        errors = np.array([(by_kind["circle"] >= c).sum() + (by_kind["square"] < c).sum() for c in lines])
        at = lines[errors == errors.min()]
        best[name] = f"from {at.min():.3f} to {at.max():.3f} ({errors.min()} of them wrong there)"
    for name, where in best.items():
        print(f"{name}: a line that reads most circles and squares right lies {where}")


if __name__ == "__main__":
    main()
