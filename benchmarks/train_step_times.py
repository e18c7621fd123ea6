"""Seconds per training step of each phase of `minisd train`, on this machine: one process, or several.

    python benchmarks/train_step_times.py
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/train_step_times.py

Runs a few steps of every phase of the shipped recipe's settings (a small latent pool, no state saved) and prints
the median of each phase's step times, the first steps left out (warm-up). With several processes each step is one
step of the whole batch, shared among them.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minisd.train import Settings, Trainer


class TimedTrainer(Trainer):
    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.times: dict[str, list[float]] = {}

    def after_step(self, phase, loss, bar, start) -> None:
        super().after_step(phase, loss, bar, start)
        self.times.setdefault(phase, []).append(time.perf_counter() - start)

    def save_state(self) -> None:
        """Nothing to resume: no state file is written."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="steps of each phase")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each phase left out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        steps = dict(vae_steps=args.steps, unet_steps=args.steps, decoder_steps=args.steps)
        trainer = TimedTrainer(Settings(Path(out), pool=2048, **steps))
        trainer.train_phases()
    if trainer.rank == 0:
        medians = {k: statistics.median(v[args.warmup :]) for k, v in trainer.times.items()}
        who = f"{trainer.world} process(es) × {torch.get_num_threads()} thread(s)"
        print(f"{who}, {trainer.device}, torch {torch.__version__}")
        print(", ".join(f"{phase} {seconds:.3f} s" for phase, seconds in medians.items()))


if __name__ == "__main__":
    main()
