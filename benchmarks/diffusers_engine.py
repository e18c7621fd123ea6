"""Record a generation of diffusers' StableDiffusionPipeline under minisd's recording names.

    python benchmarks/diffusers_engine.py "a red circle" --weights weights/minisd-tiny --out ref.safetensors
    minisd record "a red circle" --engine diffusers --out ref.safetensors      # runs this file

It lives outside the ``minisd`` package because minisd never imports diffusers. The names and their meaning
are minisd.reference's; here they are taken from diffusers' own run: its text encoder's inputs and outputs,
its UNet's inputs and outputs and those of its parts (forward hooks), and what its scheduler's ``step`` got
and gave. diffusers' PNDM and DPM-Solver++ steps do not report x̂_0, so those recordings lack pred_x0.
Only diffusers model folders are read (``from_pretrained``, offline).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisd.reference import (
    UNET_PARTS,
    VAE_PARTS,
    Recording,
    Settings,
    environment,
    part_outputs,
    step_name,
    weights_hash,
)
from minisd.schedulers.from_diffusers import SCHEDULER_CLASSES


@torch.no_grad()
def record_diffusers(settings: Settings, weights: str | Path) -> Recording:
    """diffusers' run of ``settings`` on the model folder ``weights``, under minisd's names."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        weights, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    s = settings
    if s.scheduler is not None:  # swapped the documented way: Class.from_config(pipe.scheduler.config)
        cls = {name: cls for cls, name in SCHEDULER_CLASSES.items()}[s.scheduler]
        pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)

    ids, texts, unet_io, steps_seen, noise, parts, vae_parts = [], [], [], [], [], {}, {}
    hooks = [
        pipe.text_encoder.register_forward_pre_hook(lambda m, args: ids.append(args[0])),
        pipe.text_encoder.register_forward_hook(lambda m, args, out: texts.append(out[0])),
        pipe.unet.register_forward_pre_hook(lambda m, args: unet_io.append([args[0]])),
        pipe.unet.register_forward_hook(lambda m, args, out: unet_io[-1].append(out[0])),
        pipe.vae.post_quant_conv.register_forward_pre_hook(lambda m, args: vae_parts.update(input=args[0])),
    ]

    step = pipe.scheduler.step

    @functools.wraps(step)  # the pipeline reads step's signature to decide whether to pass eta and the generator
    def recorded_step(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        x0 = getattr(out, "pred_original_sample", None) if not isinstance(out, tuple) else None
        steps_seen.append(
            (int(timestep), sample, model_output, x0, out[0] if isinstance(out, tuple) else out.prev_sample)
        )
        return out

    prepare = pipe.prepare_latents

    def recorded_prepare(batch, channels, h, w, dtype, device, generator, latents=None):
        state = generator.get_state()  # the noise before init_noise_sigma: the same draw again
        noise.append(
            torch.randn(
                (batch, channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor),
                generator=torch.Generator().set_state(state),
                dtype=dtype,
            )
        )
        return prepare(batch, channels, h, w, dtype, device, generator, latents)

    pipe.scheduler.step, pipe.prepare_latents = recorded_step, recorded_prepare
    try:
        with (
            part_outputs(pipe.unet, UNET_PARTS, "unet", parts, lambda: len(unet_io) == s.block_step + 1),
            part_outputs(pipe.vae, VAE_PARTS, "vae", vae_parts),
        ):
            out = pipe(
                s.prompt,
                negative_prompt=s.negative_prompt,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                generator=torch.Generator().manual_seed(s.seed),
                height=s.height,
                width=s.width,
                output_type="pt",
            )
    finally:
        for h in hooks:
            h.remove()

    rec, guided = Recording(), s.guidance_scale > 1
    rec.add("text/ids_cond", ids[0])
    rec.add("text/cond", texts[0])
    if guided:
        rec.add("text/ids_uncond", ids[1])
        rec.add("text/uncond", texts[1])
    rec.add("noise/initial", noise[0])
    for i, ((_, x_t, eps, x0, x_prev), (model_input, eps_pred)) in enumerate(zip(steps_seen, unet_io, strict=True)):
        rec.add(step_name(i, "x_t"), x_t)
        rec.add(step_name(i, "model_input"), model_input.chunk(2)[0] if guided else model_input)
        if i == s.block_step:
            for name, value in parts.items():
                rec.add(name, value)
        eps_uncond, eps_cond = eps_pred.chunk(2) if guided else (None, eps_pred)
        if guided:
            rec.add(step_name(i, "eps_uncond"), eps_uncond)
        rec.add(step_name(i, "eps_cond"), eps_cond)
        rec.add(step_name(i, "eps"), eps)
        if x0 is not None:
            rec.add(step_name(i, "pred_x0"), x0)
        rec.add(step_name(i, "x_prev"), x_prev)
    rec.add("latents/final", steps_seen[-1][-1])
    rec.add("vae/input", vae_parts.pop("input"))
    for name, value in vae_parts.items():
        rec.add(name, value)
    rec.add("image/decoded", out.images)
    rec.meta = {
        "engine": f"diffusers {diffusers.__version__}",
        "settings": asdict(s),
        "scheduler": SCHEDULER_CLASSES.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__),
        "timesteps": [seen[0] for seen in steps_seen],
        "model": {"weights": str(weights), "hash": weights_hash(pipe.text_encoder, pipe.unet, pipe.vae)},
        "environment": environment(pipe.device, pipe.unet.dtype),
    }
    return rec


def main(argv: list[str] | None = None) -> int:
    from minisd.cli import record_parser, record_settings

    args = record_parser().parse_args(argv)
    rec = record_diffusers(record_settings(args), args.weights)
    rec.save(args.out)
    print(f"recorded {len(rec.tensors)} tensors of diffusers' run to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
