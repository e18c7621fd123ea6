"""`make bench`'s GPU rows: a whole 512² text-to-image of 50 steps in fp16, minisd against diffusers (SDPA
attention, its default), eager and under ``torch.compile``, the same random SD1.x weights, timed alternately.

    python benchmarks/gpu_bench.py [--steps 50] [--repeats 3] [--out gpu.md] [--quick]

Each figure is the median of ``--repeats`` generations after a warm-up (the compile happens in the warm-up,
timed on its own). Peak memory is torch's peak of allocated GPU memory during a generation, above what the
loaded models hold. The pictures of the two engines are compared too (same seed, same weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench import machine, write_models  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"


def engines(folder: Path, device: str, dtype: torch.dtype):
    """name -> (run(steps, size) -> the picture (H, W, 3) uint8, the pipeline)."""
    import diffusers

    import minisd

    diffusers.utils.logging.set_verbosity_error()
    ours = minisd.load_pipeline(folder, device=device, dtype=dtype)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    theirs.set_progress_bar_config(disable=True)

    def run_ours(steps: int, size: int) -> np.ndarray:
        result = ours.text_to_image(PROMPT, steps=steps, height=size, width=size, seed=0, progress=False)
        return np.asarray(result.images[0])

    def run_theirs(steps: int, size: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        out = theirs(PROMPT, num_inference_steps=steps, height=size, width=size, generator=generator)
        return np.asarray(out.images[0])

    return {"minisd": (run_ours, ours), "diffusers": (run_theirs, theirs)}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args) -> tuple[float, object]:
    synchronize()
    start = time.perf_counter()
    out = fn(*args)
    synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the table (markdown) here too (the committed one: benchmarks/RESULTS_GPU.md)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    size, steps = (64, 2) if args.quick else (512, args.steps)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = write_models(Path(tmp), args.quick)
        runs = engines(folder, device, dtype)
        for compiled in (False, True):
            compile_s = {}
            for name, (run, pipe) in runs.items():
                if compiled:  # the UNet, which runs 50 times (its compile is the long one)
                    pipe.unet.compile()
                compile_s[name], _ = timed(run, steps, size)  # warm-up (and the compile)
            times, peaks, images = {n: [] for n in runs}, {n: 0.0 for n in runs}, {}
            for _ in range(args.repeats):
                for name, (run, _) in runs.items():
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                        held = torch.cuda.memory_allocated()
                    seconds, images[name] = timed(run, steps, size)
                    times[name].append(seconds)
                    if device == "cuda":
                        peaks[name] = max(peaks[name], (torch.cuda.max_memory_allocated() - held) / 2**20)
            a, b = (images[n].astype(np.int16) for n in runs)
            rows.append({
                "what": f"text-to-image {size}², {steps} steps, {str(dtype).split('.')[-1]}"
                        + (", UNet under `torch.compile`" if compiled else ""),
                **{n: statistics.median(t) for n, t in times.items()},
                "peaks": peaks,
                "compile": compile_s if compiled else None,
                "max_diff": int(np.abs(a - b).max()),
            })  # fmt: skip
            print(rows[-1], flush=True)
            report(rows, started, args)


def report(rows: list[dict], started: float, args) -> None:
    lines = [
        f"{machine()}.",
        f"Measured by `python {' '.join(sys.argv)}` in {time.perf_counter() - started:.0f} s"
        + (" (QUICK: tiny sizes, not a measurement)." if args.quick else "."),
        "",
        "| what | minisd | diffusers | ratio | peak GPU memory minisd / diffusers | first call (compile) | "
        "max pixel difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = f"{r['compile']['minisd']:.0f} s / {r['compile']['diffusers']:.0f} s" if r["compile"] else "—"
        mem = f"{r['peaks']['minisd']:.0f} / {r['peaks']['diffusers']:.0f} MiB"
        lines.append(
            f"| {r['what']} | {r['minisd']:.3f} s | {r['diffusers']:.3f} s | {r['minisd'] / r['diffusers']:.2f}× | "
            f"{mem} | {first} | {r['max_diff']} / 255 |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
