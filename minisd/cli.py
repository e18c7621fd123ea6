"""The ``minisd`` command line: generate, img2img, inpaint, inspect, record, compare, demo, train.

A user mistake (a bad flag, a missing file, a size not divisible by 8, an unknown scheduler, a checkpoint
that does not fit) ends in one line on stderr and exit code 2, with no traceback and no output file; NaN or
Inf in the latents or picture in exit code 1; Ctrl-C in exit code 130. SECURITY.md lists the whole catalogue.
Pictures are written atomically: to a temporary file beside the target, renamed when complete.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image

from .checkpoints import CheckpointError
from .inspection import describe
from .schedulers import SCHEDULERS
from .viz import save_atomically, trace_grid

WEIGHTS_HELP = "a diffusers model folder or a CompVis single file (default: $MINISD_WEIGHTS, else minisd-tiny)"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors become one line (its default prints the usage too)."""

    def error(self, message: str):
        raise UserError(message)


def output_paths(args: argparse.Namespace) -> list[Path]:
    """The pictures' paths, checked before any work is done."""
    path = Path(args.out)
    if path.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name such as {path / 'minisd.png'}")
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UserError(f"--out {args.out}: give a .png (or .jpg/.webp) file name")
    if not path.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {path.parent} does not exist")
    if args.trace and Path(args.trace).exists() and not Path(args.trace).is_dir():
        raise UserError(f"--trace {args.trace} is a file, not a folder")
    for flag, value in (("--steps", args.steps), ("--num-images", args.num_images)):
        if value < 1:
            raise UserError(f"{flag} {value}: need at least 1")
    for flag in ("height", "width"):
        if getattr(args, flag, None) is not None and getattr(args, flag) <= 0:
            raise UserError(f"--{flag} {getattr(args, flag)}: need a positive number of pixels")
    n = args.num_images
    return [path] if n == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def open_pipeline(args: argparse.Namespace):
    from .pipeline import load_pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this PyTorch sees no CUDA GPU (a CPU build, or no driver)")
    if args.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here")

    for flag in ("attention_chunk", "vae_tile"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: need at least 1")
    options = dict(device=args.device, dtype=DTYPES[args.dtype], config=args.config)
    pipe = load_pipeline(args.weights, prediction_type=getattr(args, "prediction_type", None), **options)
    low_memory = ("attention_chunk", "vae_tile", "drop_text_encoder")
    pipe.set_low_memory(*(getattr(args, name, None) for name in low_memory))
    if getattr(args, "channels_last", False):
        pipe.channels_last()
    return pipe.compile() if getattr(args, "compile", False) else pipe


def write_results(result, paths: list[Path], trace_dir: str | None, pipe) -> None:
    pictures = dict(zip(paths, result.images, strict=True))
    if trace_dir:
        pictures[Path(trace_dir) / "trace.png"] = trace_grid(result.trace, pipe)
    save_atomically(pictures)
    for path in pictures:
        print(path)


def generation_options(args: argparse.Namespace) -> dict:
    """The flags text-to-image and image-to-image share, as the pipeline's keyword arguments."""
    return dict(
        negative_prompt=args.negative,
        steps=args.steps,
        guidance_scale=args.guidance,
        scheduler=args.scheduler,
        seed=args.seed,
        eta=args.eta,
        num_images=args.num_images,
        trace=bool(args.trace),
    )


def generate(args: argparse.Namespace) -> None:
    paths = output_paths(args)
    pipe = open_pipeline(args)
    result = pipe.text_to_image(args.prompt, height=args.height, width=args.width, **generation_options(args))
    write_results(result, paths, args.trace, pipe)


def img2img(args: argparse.Namespace) -> None:
    paths = output_paths(args)
    if not 0 <= args.strength <= 1:
        raise UserError(f"--strength {args.strength}: give a number from 0 to 1")
    image = open_picture(args.image, "--image")
    pipe = open_pipeline(args)
    result = pipe.image_to_image(args.prompt, image, strength=args.strength, **generation_options(args))
    write_results(result, paths, args.trace, pipe)


def open_picture(path: str, flag: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as e:
        raise UserError(f"{flag} {path} does not exist") from e
    except OSError as e:
        raise UserError(f"{flag} {path} is not a picture PIL can read ({e})") from e
    return image


def inpaint(args: argparse.Namespace) -> None:
    paths = output_paths(args)
    if not 0 < args.strength <= 1:
        raise UserError(f"--strength {args.strength}: give a number in (0, 1]")
    image, mask = open_picture(args.image, "--image"), open_picture(args.mask, "--mask")
    pipe = open_pipeline(args)
    result = pipe.inpaint(
        args.prompt, image, mask, strength=args.strength, height=args.height, width=args.width,
        **generation_options(args),
    )  # fmt: skip
    write_results(result, paths, args.trace, pipe)


def inspect(args: argparse.Namespace) -> None:
    report = describe(args.path)
    print(f"{args.path}: {report['layout']}")
    print(f"  family: {report['family']}")
    if "variant" in report:
        print(f"  variant (from its shapes): {report['variant']}")
    for name, c in report["components"].items():
        if "error" in c:
            print(f"  {name}: cannot build ({c['error']})")
        elif "class" in c:
            print(f"  {name}: {c['class']}")
        else:
            print(f"  {name}: {c['parameters']:,} parameters in {c['tensors']} tensors, {'/'.join(c['dtypes'])}")
            for label in ("missing", "unexpected", "wrong_shape"):
                if c[label]:
                    more = f" (+{len(c[label]) - 5} more)" if len(c[label]) > 5 else ""
                    print(f"    {label.replace('_', ' ')} keys: {', '.join(c[label][:5])}{more}")
    print(f"  EMA weights: {'present' if report['ema'] else 'absent'}")
    if report["other"]:
        shown = ", ".join(report["other"][:6]) + (" ..." if len(report["other"]) > 6 else "")
        print(f"  other tensors ({len(report['other'])}, ignored when loading): {shown}")


def demo(args: argparse.Namespace) -> None:
    """A few pictures from captions and the trace of one, with minisd-tiny unless --weights says otherwise."""
    from .demo import CAPTIONS, run_demo

    run_demo(args.prompts or list(CAPTIONS), Path(args.out), args.weights and Path(args.weights), args.seed)


def train(args: argparse.Namespace) -> None:
    from .train import Settings
    from .train import train as run_training

    settings = Settings.quick(Path(args.out), args.seed) if args.quick else Settings(Path(args.out), args.seed)
    for name in ("vae_steps", "unet_steps", "decoder_steps"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: need at least 1")
            setattr(settings, name, getattr(args, name))
    print(f"model written to {run_training(settings, resume=args.resume)}")


def record(args: argparse.Namespace) -> None:
    """Every intermediate of one generation into one safetensors file (see minisd/reference.py)."""
    out = Path(args.out)
    if out.suffix != ".safetensors" or not out.parent.is_dir():
        raise UserError(f"--out {args.out}: give a .safetensors file name in an existing folder")
    if args.engine == "diffusers":
        return record_with_diffusers(args)
    from .reference import record as run_record

    settings = vars(record_settings(args))
    rec = run_record(settings.pop("prompt"), args.weights, pipe=open_pipeline(args), **settings)
    rec.save(out)
    print(f"recorded {len(rec.tensors)} tensors to {out}")


def record_settings(args: argparse.Namespace):
    from .reference import Settings

    names = dict(negative_prompt="negative", guidance_scale="guidance")
    return Settings(**{f: getattr(args, names.get(f, f)) for f in Settings.__dataclass_fields__})


def record_with_diffusers(args: argparse.Namespace) -> None:
    """Run benchmarks/diffusers_engine.py in its own process: minisd itself never imports diffusers."""
    import subprocess

    engine = Path(__file__).resolve().parent.parent / "benchmarks" / "diffusers_engine.py"
    if not engine.is_file():
        raise UserError("--engine diffusers needs minisd's repository (benchmarks/diffusers_engine.py) and diffusers")
    if args.weights is None or not Path(args.weights, "model_index.json").is_file():
        raise UserError("--engine diffusers: give --weights, a diffusers model folder (with model_index.json)")
    argv = [args.prompt, "--weights", args.weights, "--out", args.out, "--negative", args.negative]
    for flag in ("steps", "scheduler", "guidance", "seed", "height", "width", "block_step"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run([sys.executable, str(engine), *argv])
    if done.returncode:
        raise UserError(f"the diffusers engine failed (exit code {done.returncode}); see its message above")


def compare(args: argparse.Namespace) -> int:
    from .reference import Recording
    from .reference import compare as run_compare

    report = run_compare(Recording.load(args.a), Recording.load(args.b), rtol=args.rtol, atol=args.atol)
    print(report)
    return 1 if report.first_failure else 0


def add_record_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the model's own")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (≤ 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.add_argument("--block-step", type=int, default=0, help="the step whose UNet parts are recorded")
    p.add_argument("--out", required=True, help="the recording, a .safetensors file")


def record_parser() -> argparse.ArgumentParser:
    """The flags of ``minisd record``, for benchmarks/diffusers_engine.py to read the same command line."""
    p = Parser(prog="diffusers_engine.py", description="Record diffusers' generation under minisd's names.")
    add_record_flags(p)
    p.add_argument("--engine", choices=["diffusers"], default="diffusers")
    return p


def add_generation_flags(p: argparse.ArgumentParser, default_steps: int) -> None:
    p.add_argument("prompt")
    p.add_argument("--negative", default="", help="negative prompt (what to steer away from)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--config", help="for a single file of another shape than SD1.x: its diffusers folder")
    p.add_argument("--steps", type=int, default=default_steps)
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the model's own")
    p.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (≤ 1: off); default: the model's, 7.5 unless its folder's "
        "generation_defaults.json says otherwise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's η (0: deterministic)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--out", default="minisd.png")
    p.add_argument("--trace", metavar="DIR", help="also write DIR/trace.png: x_t and predicted x0 per step")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], help="override the model's (SD 2.x)")
    p.add_argument("--attention-chunk", type=int, metavar="N", help="low memory: attend N queries at a time")
    p.add_argument("--vae-tile", type=int, metavar="N", help="low memory: decode N×N latent tiles (64: 512 px)")
    p.add_argument("--drop-text-encoder", action="store_true", help="low memory: free the text encoder after use")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder (slow first call)")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions: faster on CPUs, in bf16 most")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minisd", description="Stable Diffusion, written to be read.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("generate", help="text to image")
    add_generation_flags(p, default_steps=50)
    p.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.set_defaults(run=generate)

    p = sub.add_parser("img2img", help="image to image")
    add_generation_flags(p, default_steps=50)
    p.add_argument("--image", required=True, help="the starting picture")
    p.add_argument("--strength", type=float, default=0.8, help="0 keeps the picture, 1 replaces it")
    p.set_defaults(run=img2img)

    p = sub.add_parser("inpaint", help="redraw the part of a picture under a mask (white = redraw)")
    add_generation_flags(p, default_steps=50)
    p.add_argument("--image", required=True, help="the picture")
    p.add_argument("--mask", required=True, help="white where the picture is redrawn, black where it is kept")
    p.add_argument("--strength", type=float, default=1.0, help="how much of the masked part to redraw, (0, 1]")
    p.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    p.set_defaults(run=inpaint)

    p = sub.add_parser("inspect", help="what a checkpoint holds")
    p.add_argument("path")
    p.set_defaults(run=inspect)

    p = sub.add_parser("train", help="train minisd-tiny, a small SD, on the shapes world (see minisd/train.py)")
    p.add_argument("--out", required=True, help="folder for the model, its training state and loss curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, help="VAE training steps (default 1500)")
    p.add_argument("--unet-steps", type=int, help="text encoder + UNet training steps (default 4400)")
    p.add_argument("--decoder-steps", type=int, help="steps of the VAE decoder's fine-tune (default 600)")
    p.add_argument("--quick", action="store_true", help="a few steps at a small batch: a smoke test")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.set_defaults(run=train)

    p = sub.add_parser("record", help="record every intermediate of one generation (see minisd/reference.py)")
    add_record_flags(p)
    p.add_argument("--engine", choices=["minisd", "diffusers"], default="minisd", help="diffusers: its pipeline")
    p.add_argument("--config", help="for a single file of another shape than SD1.x: its diffusers folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.set_defaults(run=record)

    p = sub.add_parser("compare", help="compare two recordings stage by stage; exit 1 at a divergence")
    p.add_argument("a", help="the reference recording")
    p.add_argument("b", help="the recording to check")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative error allowed, ‖a − b‖/‖a‖ (default 1e-4)")
    p.add_argument("--atol", type=float, default=0.0, help="max abs error below which a stage passes anyway")
    p.set_defaults(run=compare)

    p = sub.add_parser("demo", help="a few pictures and the denoising trace of one, into outputs/")
    p.add_argument("prompts", nargs="*", help="captions (default: four of the shapes world)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs", help="folder for demo.png and trace.png")
    p.set_defaults(run=demo)
    return parser


def argv_command(argv: list[str] | None) -> str | None:
    """The subcommand named on the command line, if any."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"minisd: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning  # a user reads "minisd: warning: …", not a source line
    try:
        args = build_parser().parse_args(argv)
        status = args.run(args)
    except (UserError, CheckpointError, OSError, ValueError, TypeError) as e:
        print(f"minisd: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NaN or Inf in the latents or the picture: nothing is written
        print(f"minisd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = "the training state is saved (continue with --resume)" if argv_command(argv) == "train" else (
            "no picture was written")  # fmt: skip
        print(f"minisd: interrupted; {kept}", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    return status or 0
