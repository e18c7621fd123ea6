"""`make bench`: minisd against diffusers on this machine, the same weights, timed alternately in one run.

    python benchmarks/bench.py [--repeats 3] [--out benchmarks/RESULTS.md] [--quick]

Every figure is a median of ``--repeats`` runs after a warm-up, minisd and diffusers alternating so that
both see the same machine state; the ratio is minisd's time over diffusers'. The weights are random at
SD1.x's full configuration (timings do not depend on the values). Peak memory is the growth of the resident
set while the measured thing runs (sampled from /proc), each engine in a fresh process. ``--quick`` runs
everything at tiny sizes: a smoke test of this script, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from measure import peak_memory_mib  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SD1_UNET = dict(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD1_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)
SD1_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
TINY_UNET = dict(SD1_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=2,
                 norm_num_groups=8, sample_size=8)  # fmt: skip
TINY_VAE = dict(SD1_VAE, block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=64)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, after one warm-up each, taking turns."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_state(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in reference.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# The networks, one at a time, in this process


def network_pairs(quick: bool):
    """(name, diffusers/transformers module, minisd module, inputs) with the same random weights."""
    from diffusers import AutoencoderKL as RefVAE
    from diffusers import UNet2DConditionModel as RefUNet
    from transformers import CLIPTextConfig as RefTextConfig
    from transformers import CLIPTextModel as RefText

    import minisd
    from minisd.checkpoints import text_encoder_from_diffusers

    unet_cfg, vae_cfg, text_cfg = (TINY_UNET, TINY_VAE, TINY_TEXT) if quick else (SD1_UNET, SD1_VAE, SD1_TEXT)
    side = 8 if quick else 64  # latent side: 64 is a 512² picture
    g = torch.Generator().manual_seed(1)

    ref = RefUNet(**unet_cfg).eval()
    ref.load_state_dict(random_state(ref))
    ours = minisd.UNet2DConditionModel(minisd.UNetConfig.from_dict(unet_cfg)).eval()
    ours.load_state_dict(ref.state_dict())
    x, c = torch.randn(2, 4, side, side, generator=g), torch.randn(2, 77, unet_cfg["cross_attention_dim"], generator=g)
    yield "UNet forward, batch 2 (one guided step)", ref, ours, (x, torch.tensor([500, 500]), c)

    ref = RefText(RefTextConfig(**text_cfg)).eval()
    ref.load_state_dict(random_state(ref))
    ours = minisd.CLIPTextModel(minisd.CLIPTextConfig(**text_cfg)).eval()
    ours.load_state_dict(text_encoder_from_diffusers(ref.state_dict()))
    yield "text encoder, batch 2", ref, ours, (torch.randint(0, 49408, (2, 77), generator=g),)

    ref = RefVAE(**vae_cfg).eval()
    ref.load_state_dict(random_state(ref))
    ours = minisd.AutoencoderKL(minisd.VAEConfig.from_dict(vae_cfg)).eval()
    ours.load_state_dict(ref.state_dict())
    yield "VAE decode, one picture", ref.decode, ours.decode, (torch.randn(1, 4, side, side, generator=g),)


def cast(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if a.is_floating_point() else a for a in args)


@torch.no_grad()
def bench_networks(quick: bool, repeats: int) -> list[dict]:
    rows = []
    for name, ref, ours, args in network_pairs(quick):
        for label, dtype in DTYPES.items():
            modules = [m.__self__ if hasattr(m, "__self__") else m for m in (ref, ours)]
            for m in modules:
                m.to(dtype)
            a = cast(args, dtype)
            t = alternate({"minisd": lambda o=ours, a=a: o(*a), "diffusers": lambda r=ref, a=a: r(*a)}, repeats)
            rows.append({"what": name, "dtype": label, **t})
            if not name.startswith("text"):  # convolutions: minisd's channels_last option, against the same
                modules[1].to(memory_format=torch.channels_last)
                t = alternate({"minisd": lambda o=ours, a=a: o(*a), "diffusers": lambda r=ref, a=a: r(*a)}, repeats)
                rows.append({"what": name + ", minisd `channels_last()`", "dtype": label, **t})
                modules[1].to(memory_format=torch.contiguous_format)
            for m in modules:
                m.float()
    return rows


# ---------------------------------------------------------------------------------------------------------
# Whole generations and loading, each engine in a fresh process


def write_models(folder: Path, quick: bool) -> tuple[Path, Path]:
    """A diffusers folder and a CompVis single file (fp16 storage, as the public files) of random SD1.x."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers import CLIPTokenizer as HFTokenizer

    from minisd.checkpoints import unet_to_compvis, vae_to_compvis
    from minisd.tokenizer import CLIPTokenizer
    from minisd.unet import UNetConfig
    from minisd.vae import VAEConfig
    from tests.tiny_sd import SD15_SCHEDULER_FILE

    unet_cfg, vae_cfg, text_cfg = (TINY_UNET, TINY_VAE, TINY_TEXT) if quick else (SD1_UNET, SD1_VAE, SD1_TEXT)
    parts = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg)}
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**text_cfg))
    for m in parts.values():
        m.load_state_dict(random_state(m))
        m.to(torch.float16)
    CLIPTokenizer.from_openai_vocab().save(folder / "tokenizer")
    tokenizer = HFTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_FILE)
    pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(folder / "folder")
    (folder / "folder" / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_FILE))
    state = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
             for k, v in parts["text_encoder"].state_dict().items() if "position_ids" not in k}  # fmt: skip
    state |= unet_to_compvis(parts["unet"].state_dict(), UNetConfig.from_dict(unet_cfg))
    state |= vae_to_compvis(parts["vae"].state_dict(), VAEConfig.from_dict(vae_cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder / "folder", folder / "model.safetensors"


def child(job: str, engine: str, path: str, dtype: str, size: int, steps: int) -> dict:
    """In a fresh process: one load or one generation; seconds and peak memory growth (MiB)."""
    torch_dtype = DTYPES[dtype]
    if engine == "diffusers":
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    else:
        import minisd
    if job == "load":  # the configs from the diffusers folder beside the file, for both
        folder = str(Path(path).parent / "folder")

        def load():
            if engine == "minisd":
                return minisd.load_pipeline(path, config=folder)
            return diffusers.StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True)

        # Sampled from /proc, not ru_maxrss: a child's ru_maxrss starts at its parent's resident size at the
        # fork (Linux keeps the high-water mark across exec), which here was the parent's 8 GB of models.
        start = time.perf_counter()
        peak = peak_memory_mib(load)
        return {"seconds": time.perf_counter() - start, "peak_mib": peak}
    if engine == "minisd":
        pipe = minisd.load_pipeline(path, dtype=torch_dtype)

        def run():
            pipe.text_to_image("a photograph of an astronaut", steps=steps, height=size, width=size, progress=False)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype)
        pipe.set_progress_bar_config(disable=True)

        def run():
            pipe("a photograph of an astronaut", num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip

    start = time.perf_counter()
    peak = peak_memory_mib(run)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak}


def in_child(*args) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_processes(quick: bool, repeats: int) -> list[dict]:
    rows = []
    size, steps = (64, 2) if quick else (512, 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder, single = write_models(Path(tmp), quick)
        for label in DTYPES:
            runs = {e: [in_child("generate", e, str(folder), label, size, steps) for _ in range(max(1, repeats // 2))]
                    for e in ("minisd", "diffusers")}  # fmt: skip
            rows.append(summarise(f"text-to-image {size}², {steps} steps (wall, peak memory)", label, runs))
        runs = {e: [in_child("load", e, str(single), "fp32", 0, 0) for _ in range(max(1, repeats // 2))]
                for e in ("minisd", "diffusers")}  # fmt: skip
        size_gb = single.stat().st_size / 1e9
        rows.append(summarise(f"load a single file ({size_gb:.2f} GB, fp16) into fp32", "fp32", runs))
    return rows


def summarise(what: str, dtype: str, runs: dict[str, list[dict]]) -> dict:
    row = {"what": what, "dtype": dtype}
    for engine, results in runs.items():
        row[engine] = statistics.median(r["seconds"] for r in results)
        row[f"{engine}_mib"] = statistics.median(r["peak_mib"] for r in results)
    return row


def bench_cold_start(repeats: int) -> dict:
    """`minisd generate` on the shipped model, from a cold process to the PNG."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "minisd", "generate", "a red circle on the left", "--out", f"{tmp}/x.png"]
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return {"what": "`minisd generate` on minisd-tiny, cold start to PNG", "dtype": "fp32",
            "minisd": statistics.median(times)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = [
        "| what | dtype | minisd | diffusers | ratio | peak memory minisd / diffusers |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['minisd'] / r['diffusers']:.2f}×" if "diffusers" in r else "—"
        theirs = f"{r['diffusers']:.3f} s" if "diffusers" in r else "—"
        mem = f"{r['minisd_mib']:.0f} / {r['diffusers_mib']:.0f} MiB" if "minisd_mib" in r else "—"
        lines.append(f"| {r['what']} | {r['dtype']} | {r['minisd']:.3f} s | {theirs} | {ratio} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = bench_networks(args.quick, args.repeats)
    rows += bench_processes(args.quick, args.repeats)
    rows.append(bench_cold_start(args.repeats))
    gpu = "GPU rows (fp16, SDPA, torch.compile): `benchmarks/gpu_bench.py` on a GPU machine, RESULTS_GPU.md."
    command = " ".join(["python", *sys.argv])
    quick = " (QUICK: tiny sizes, not a measurement)" if args.quick else ""
    text = (
        f"# Benchmarks: minisd against diffusers\n\n{machine()}.\n"
        f"Measured {datetime.date.today()} by `{command}` in {time.perf_counter() - started:.0f} s{quick}.\n\n"
        f"{table(rows)}\n\nMedians of {args.repeats} runs (processes: of {max(1, args.repeats // 2)}); "
        f"ratio = minisd / diffusers (below 1: minisd faster). {gpu}\n"
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
