"""Which training recipe makes minisd-tiny draw what its captions say? Several recipes side by side, measured.

    python benchmarks/train_sweep.py --out DIR [--minutes 7] [--quick]

Stage 1 trains VAE recipes in parallel (one process each) and reads each back on the held-out scenes: PSNR, and
what ``shapes.analyse`` finds in the round trips (the cap on any UNet trained on that VAE). Stage 2 trains
text encoder + UNet recipes in parallel on the VAE with the best round trips, each from that VAE's saved
training state (``minisd train --resume``'s file), and evaluates each as ``eval_shapes`` does: the held-out
captions with the pipeline's defaults. A recipe still running at the deadline is stopped and exported as it
stands (marked ``stopped``). DIR/results.json holds every figure; the best model's folder is DIR/best.

Made for a GPU (every process shares it); on a CPU, ``--quick`` is a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from eval_shapes import evaluate, rates, round_trips, vae_psnr  # noqa: E402

from minisd import load_pipeline, train  # noqa: E402

# name: Settings fields. Stage 1 (VAE), then stage 2 (text encoder + UNet) on the best VAE.
VAE_RECIPES = {
    "vae-1000": dict(vae_steps=1000),
    "vae-2000": dict(vae_steps=2000),
}
UNET_RECIPES = {
    "lr2e-3-2000": dict(lr=2e-3, unet_steps=2000),
    "lr1e-3-2400": dict(lr=1e-3, unet_steps=2400),
    "lr5e-4-2400": dict(lr=5e-4, unet_steps=2400),
    "lr3e-4-2400": dict(lr=3e-4, unet_steps=2400),
    "lr1e-3-6000": dict(lr=1e-3, unet_steps=6000),
    "lr5e-4-6000": dict(lr=5e-4, unet_steps=6000),
}


class Deadline(Exception):
    pass


class TimedTrainer(train.Trainer):
    """A Trainer that stops (raises Deadline) once the wall clock passes ``deadline``."""

    deadline = float("inf")

    def after_step(self, phase, loss, bar, start) -> None:
        super().after_step(phase, loss, bar, start)
        if time.time() > self.deadline:
            raise Deadline

    def run_until(self, deadline: float, phase) -> bool:
        """Run ``phase`` (one of this trainer's methods) to its end or to the deadline; True if stopped."""
        self.deadline = deadline
        try:
            phase()
        except Deadline:
            return True
        return False


def score(accuracy: dict[str, float]) -> float:
    """The mean of the issue's four targets' accuracies."""
    keys = ("single colour", "single shape", "single position", "pair both")
    return float(np.mean([accuracy.get(k, 0.0) for k in keys]))


def settings(out: Path, seed: int, quick: bool, **fields) -> train.Settings:
    base = train.Settings.quick(out, seed) if quick else train.Settings(out, seed)
    for name, value in fields.items():
        if quick and name.endswith("steps"):
            value = 3
        setattr(base, name, value)
    return base


def run_vae(out: Path, name: str, seed: int, quick: bool, deadline: float) -> dict:
    trainer = TimedTrainer(settings(out / name, seed, quick, **VAE_RECIPES[name]))
    start = time.perf_counter()
    stopped = trainer.run_until(deadline, trainer.train_vae)
    trainer.scaling_factor = trainer.vae.config.scaling_factor = trainer.measure_scaling_factor()
    trainer.phase, trainer.step = "unet", 0
    trainer.save_state()
    vae = trainer.vae.eval()
    accuracy, psnr = rates(round_trips(vae)), vae_psnr(vae)
    return {
        "name": name,
        "steps": len(trainer.losses["vae"]),
        "stopped": stopped,
        "seconds": round(time.perf_counter() - start, 1),
        "psnr": round(psnr, 2),
        "round_trip": accuracy,
        "score": score(accuracy),
    }


def run_unet(out: Path, name: str, vae: str, seed: int, quick: bool, deadline: float, seeds: int) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / vae / "train_state.pt", folder / "train_state.pt")
    trainer = TimedTrainer(settings(folder, seed, quick, **VAE_RECIPES[vae], **UNET_RECIPES[name]))
    trainer.load_state()
    start = time.perf_counter()
    stopped = trainer.run_until(deadline, trainer.train_phases)
    trainer.seconds = time.perf_counter() - start
    trainer.export(folder)
    trainer.plot_losses(folder / "loss.png")
    pipe = load_pipeline(folder, device=trainer.device)
    accuracy, _ = evaluate(pipe, 1, limit=4) if quick else evaluate(pipe, seeds)
    return {
        "name": name,
        "vae": vae,
        "steps": len(trainer.losses["unet"]),
        "stopped": stopped,
        "seconds": round(time.perf_counter() - start, 1),
        "accuracy": accuracy,
        "score": score(accuracy),
    }


def in_parallel(jobs: list[list], out: Path, flags: list[str]) -> list[dict]:
    """Each job a child process of this script (given ``flags``); their results (or errors), in order."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    procs = []
    for job in jobs:
        cmd = [sys.executable, __file__, "--child", json.dumps(job), "--out", str(out), *flags]
        with open(out / f"{job[1]}.log", "w") as log:  # the child holds its own copy of the file
            procs.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
    results = []
    for job, proc in procs:
        proc.wait()
        path = out / f"{job[1]}.json"
        if proc.returncode == 0 and path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            tail = (out / f"{job[1]}.log").read_text()[-1500:]
            results.append({"name": job[1], "error": f"exit {proc.returncode}", "log": tail, "score": -1})
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=4, help="evaluation seeds per held-out caption")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of the whole sweep")
    p.add_argument("--vae-share", type=float, default=0.2, help="the part of the budget stage 1 may use")
    p.add_argument("--vae", nargs="+", choices=list(VAE_RECIPES), default=list(VAE_RECIPES), help="VAE recipes")
    p.add_argument("--unet", nargs="+", choices=list(UNET_RECIPES), default=list(UNET_RECIPES), help="UNet recipes")
    p.add_argument("--quick", action="store_true", help="a few steps each: a smoke test of this script")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.child:
        kind, name, *rest = json.loads(args.child)
        torch.set_num_threads(2)
        if kind == "vae":
            result = run_vae(out, name, args.seed, args.quick, rest[0])
        else:
            result = run_unet(out, name, rest[0], args.seed, args.quick, rest[1], args.seeds)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        return

    out.mkdir(parents=True, exist_ok=True)
    flags = ["--seed", str(args.seed), "--seeds", str(args.seeds)] + (["--quick"] if args.quick else [])
    start = time.time()
    end = start + 60 * args.minutes
    eval_margin = 20 if args.quick else 75  # seconds kept for the export and the evaluation after a stop
    vae_deadline = start + 60 * args.minutes * args.vae_share
    vaes = in_parallel([["vae", name, vae_deadline] for name in args.vae], out, flags)
    best_vae = max(vaes, key=lambda r: r["score"])["name"]
    print(f"stage 1 done at {time.time() - start:.0f} s; UNets on {best_vae}", flush=True)
    unets = in_parallel([["unet", name, best_vae, end - eval_margin] for name in args.unet], out, flags)
    best = max(unets, key=lambda r: r["score"])
    # The best of the recipes that fit the hour on a 2-core CPU (and ran to their end).
    fits = [r for r in unets if r["score"] >= 0 and not r["stopped"] and UNET_RECIPES[r["name"]]["unet_steps"] <= 2400]
    for label, chosen in (("best", best), ("best_cpu", max(fits, key=lambda r: r["score"], default=None))):
        if chosen is not None and chosen["score"] >= 0:
            shutil.copytree(out / chosen["name"], out / label, dirs_exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"device": device, "torch": torch.__version__, "seconds": round(time.time() - start), "vae": vaes}
    (out / "results.json").write_text(json.dumps(report | {"unet": unets, "best": best["name"]}, indent=2))
    print(f"\n{device}, {time.time() - start:.0f} s")
    for r in vaes + unets:
        if "error" in r:
            print(f"{r['name']:>22}: {r['error']}")
            continue
        acc = r.get("accuracy") or r["round_trip"]
        cells = " ".join(f"{k.split()[-1]} {100 * v:5.1f}%" for k, v in acc.items())
        extra = f"PSNR {r['psnr']} dB" if "psnr" in r else ""
        print(f"{r['name']:>22}: {r['steps']:5d} steps{' (stopped)' if r['stopped'] else ''} {r['seconds']:6.0f} s "
              f"score {100 * r['score']:5.1f}  {cells} {extra}")  # fmt: skip


if __name__ == "__main__":
    main()
