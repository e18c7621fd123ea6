"""Does ``torch.compile`` train minisd-tiny's text encoder + UNet step correctly? Gradients against eager.

One batch of the UNet phase's loss (``train.eps_loss`` on a fresh model, the VAE's latents of shapes pictures),
backpropagated eagerly and through ``torch.compile(backend=...)``: the loss of each, and the parameter
tensors whose gradients differ by more than 10% of their norm. On torch 2.13 (CPU) the ``inductor`` backend
got 308 of the 392 off, 200 of them zero, under bf16 autocast, so ``minisd train`` does not compile (model
card, Earlier models). Run it again before compiling the training step on a new torch.

    python benchmarks/compile_gradients.py [--backend inductor] [--fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch

from minisd import shapes
from minisd.train import NoisePrediction, Settings, Trainer, autocast, eps_loss


def gradients(model, trainer: Trainer, z0, ids, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.unet.zero_grad(set_to_none=True)
    trainer.text_encoder.zero_grad(set_to_none=True)
    with autocast(trainer.device) if bf16 else contextlib.nullcontext():
        loss = eps_loss(model, trainer.scheduler, ids, z0, torch.Generator().manual_seed(0))
    loss.backward()
    named = [*trainer.text_encoder.named_parameters("text_encoder"), *trainer.unet.named_parameters("unet")]
    return loss.item(), {k: torch.zeros_like(p) if p.grad is None else p.grad.clone() for k, p in named}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)")
    parser.add_argument("--fp32", action="store_true", help="without the training's bf16 autocast")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(Settings(Path(folder)))
    x, captions = shapes.batch(0, args.batch)
    with torch.no_grad():
        z0 = trainer.vae.encode(x.to(trainer.device)).mode()
    ids = trainer.tokenizer(captions).to(trainer.device)
    model = NoisePrediction(trainer.text_encoder, trainer.unet)
    eager_loss, eager = gradients(model, trainer, z0, ids, not args.fp32)
    compiled_loss, compiled = gradients(torch.compile(model, backend=args.backend), trainer, z0, ids, not args.fp32)
    # 10%: bf16 kernels round differently by a few per cent; 1e-6 absolute: a key projection's bias has no
    # true gradient (softmax ignores it), only rounding
    wrong = [k for k in eager if (compiled[k] - eager[k]).norm() > 0.1 * eager[k].norm() + 1e-6]
    zero = [k for k in wrong if compiled[k].norm() == 0]
    print(f"loss: eager {eager_loss:.6f}, compiled ({args.backend}) {compiled_loss:.6f}")
    print(f"gradients off by more than 10% in {len(wrong)} of {len(eager)} parameter tensors, {len(zero)} of them zero")
    for name in (zero or wrong)[:10]:
        print(f"  {name}: |eager| {eager[name].norm():.3g}, |compiled| {compiled[name].norm():.3g}")


if __name__ == "__main__":
    main()
