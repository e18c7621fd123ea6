"""The ``minisd`` command line. User mistakes end in one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoints import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def find_weights() -> Path | None:
    """The first model in ``weights/`` (a diffusers folder or a single file), if there is one."""
    if not WEIGHTS_DIR.is_dir():
        return None
    for entry in sorted(WEIGHTS_DIR.iterdir()):
        if (entry / "model_index.json").is_file() or entry.suffix in (".safetensors", ".ckpt"):
            return entry
    return None


def demo(args: argparse.Namespace) -> None:
    """Text understanding, the first third of Stable Diffusion: prompt -> tokens -> 77 vectors."""
    from .clip import CLIPTextModel, load_text_encoder
    from .tokenizer import load_tokenizer

    weights = Path(args.weights) if args.weights else find_weights()
    tok = load_tokenizer(weights)
    ids = tok([args.prompt])  # (1, 77)
    n = len(tok.encode(args.prompt))
    print(f"prompt: {args.prompt!r}")
    print(f"tokens ({n} of 77, then padding): {[tok.decode([i], False) for i in ids[0, :n].tolist()]}")
    print(f"ids: {ids[0, :n].tolist()}")
    if weights is None:
        torch.manual_seed(0)
        encoder, source = CLIPTextModel(), "an SD1.x-shaped text encoder with random weights (no model in weights/)"
    else:
        encoder, source = load_text_encoder(weights), str(weights)
    with torch.no_grad():
        emb = encoder(ids)  # (1, 77, 768)
    print(f"text encoder: {source}")
    print(f"embedding: shape {tuple(emb.shape)}, mean {emb.mean():.4f}, std {emb.std():.4f}")
    print(f"first token's first 6 numbers: {[round(x, 4) for x in emb[0, 0, :6].tolist()]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minisd", description="Stable Diffusion, written to be read.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode a prompt and show what came out")
    p.add_argument("prompt", nargs="?", default="a photograph of an astronaut riding a horse")
    p.add_argument("--weights", help="a diffusers model folder or a CompVis single file")
    p.set_defaults(run=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        args.run(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"minisd: error: {e}", file=sys.stderr)
        return 2
    return 0
