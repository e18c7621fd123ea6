"""Which sampler and guidance scale should a model ship with? Each candidate measured on the held-out captions.

Each row is a scheduler config the model folder could ship (class and timestep spacing) at a guidance scale;
the first seeds of ``eval_shapes`` are generated with it and read back by ``shapes.analyse``. The model card's
sampler table comes from here. ``--captions training`` measures on 96 captions of combinations training draws
instead of the held-out ones: choosing there keeps the held-out evaluation a test.

    python benchmarks/choose_sampler.py [--weights weights/minisd-tiny] [--seeds 2] [--captions training]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from eval_shapes import evaluate, training_scenes

from minisd import load_pipeline
from minisd.schedulers import make_scheduler

# (scheduler, timestep spacing, guidance scale): SD v1.5's sampler at several scales, the others at two
CANDIDATES = [
    ("pndm", "leading", 1.5),
    ("pndm", "leading", 2.0),
    ("pndm", "leading", 2.5),
    ("pndm", "leading", 3.0),
    ("pndm", "leading", 7.5),
    ("ddim", "trailing", 2.0),
    ("ddim", "trailing", 2.5),
    ("dpmpp_2m", "trailing", 2.0),
    ("dpmpp_2m", "trailing", 2.5),
    ("euler", "trailing", 2.0),
    ("euler", "trailing", 2.5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="model folder (default: minisd-tiny)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--captions", choices=["held-out", "training"], default="held-out")
    args = parser.parse_args()
    scenes = training_scenes() if args.captions == "training" else None
    pipe = load_pipeline(args.weights)
    shipped = pipe.scheduler
    print("| sampler | guidance | colour | shape | position | two shapes right | relation |")
    print("|---|---|---|---|---|---|---|")
    for name, spacing, guidance in CANDIDATES:
        start = time.perf_counter()
        pipe.scheduler = make_scheduler(name, dataclasses.replace(shipped.config, timestep_spacing=spacing))
        accuracy, _ = evaluate(pipe, args.seeds, scenes=scenes, guidance_scale=guidance)
        cells = [accuracy[k] for k in ("single colour", "single shape", "single position", "pair both")]
        cells.append(accuracy["pair relation"])
        row = " | ".join(f"{100 * c:.1f}%" for c in cells)
        print(f"| {name}, {spacing} | {guidance} | {row} |  ({time.perf_counter() - start:.0f} s)", flush=True)
    pipe.scheduler = shipped


if __name__ == "__main__":
    main()
