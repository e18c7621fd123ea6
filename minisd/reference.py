"""Reference recordings: every intermediate of one generation in one safetensors file, to check a port against.

A recording is what a re-implementation (a course exercise, a port to JAX/MLX/C++, a converted checkpoint)
compares with, stage by stage, in the order the data flows. Its tensors have stable names:

    text/ids_cond, text/cond            (B, 77) token ids of the prompt; (B, 77, width) the text encoder's output
    text/ids_uncond, text/uncond        the same for the negative prompt (only with guidance, scale > 1)
    noise/initial                       (B, 4, h, w) the first draw from the seed: N(0, I)
    step/{i:03d}/x_t                    the sample entering step i (σ samplers: before scale_model_input)
    step/{i:03d}/model_input            scale_model_input(x_t, t): what the UNet saw
    unet/{module}                       at one step (``block_step``): each UNet part's output, for the
                                        doubled batch [uncond, cond]: time_embedding, conv_in,
                                        down_blocks.N, mid_block, up_blocks.N, conv_out
    step/{i:03d}/eps_uncond, eps_cond   ε_θ(x_t, t, ∅) and ε_θ(x_t, t, c)
    step/{i:03d}/eps                    the guided ε = ε_u + s·(ε_c − ε_u) the scheduler stepped with
    step/{i:03d}/pred_x0                the scheduler's estimate x̂_0
    step/{i:03d}/x_prev                 x_{t−1}, the sample after the step
    latents/final                       (B, 4, h, w) the last x_prev, on the UNet's scale
    vae/input                           what the VAE decoder gets: the final latents unscaled (÷ scaling factor)
    vae/{module}                        the VAE decoder's parts: post_quant_conv, decoder.conv_in,
                                        decoder.mid_block, decoder.up_blocks.N, decoder.conv_out
    image/decoded                       (B, 3, H, W) the picture in [0, 1], before 8-bit rounding

The file's metadata (key ``minisd.recording``, JSON) holds the settings, the timesteps, the model's identity
(a hash of its weights), the versions, device and dtype, and the names in data-flow order.

    rec = record("a red circle on the left", steps=20)     # or: minisd record "..." --out ref.safetensors
    rec.save("ref.safetensors")
    report = compare(Recording.load("ref.safetensors"), Recording.load("mine.safetensors"))
    print(report)                                          # or: minisd compare ref.safetensors mine.safetensors

Any one stage can be run from the recording alone (``inputs`` / ``outputs``), so a port can be tested one
component at a time: ``rec.inputs("unet", step=3)`` are the arguments of the UNet call whose results are
``rec.outputs("unet", step=3)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import CheckpointError

FORMAT = "minisd-recording/1"
META_KEY = "minisd.recording"
UNET_PARTS = ("time_embedding", "conv_in", "down_blocks", "mid_block", "up_blocks", "conv_out")
VAE_PARTS = ("post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks", "decoder.conv_out")
STEP_OUTPUTS = ("eps_uncond", "eps_cond", "eps", "pred_x0", "x_prev")
STAGES = ("text_encoder", "unet", "guidance", "scheduler", "vae")  # what inputs()/outputs() replay
# minisd-tiny's recordings, committed in the repository (``make recordings`` writes them again).
RECORDINGS = Path(__file__).resolve().parent.parent / "weights" / "recordings"


def step_name(i: int, what: str) -> str:
    return f"step/{i:03d}/{what}"


def weights_hash(*models: torch.nn.Module) -> str:
    """sha256 of the models' parameters (name, shape, fp32 bytes) in name order: the same weights give the
    same hash whichever library loaded them (minisd keeps diffusers' and transformers' parameter names;
    transformers 5 names the text encoder's parameters without the checkpoint's "text_model." prefix)."""
    digest = hashlib.sha256()
    for model in models:
        params = {name.removeprefix("text_model."): p for name, p in model.named_parameters()}
        for name, p in sorted(params.items()):
            digest.update(f"{name}{tuple(p.shape)}".encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Recording:
    """The tensors of one generation, by name, and the metadata that says how it was made."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def add(self, name: str, value: torch.Tensor) -> None:
        self.tensors[name] = value.detach().cpu().clone(memory_format=torch.contiguous_format)  # safetensors: no views

    @property
    def order(self) -> list[str]:
        """The names in the order the data flowed (as recorded)."""
        return self.meta.get("order") or list(self.tensors)

    def save(self, path: str | Path) -> None:
        """Write atomically: a complete file or none."""
        path = Path(path)
        self.meta["order"] = list(self.tensors)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(self.tensors, tmp, metadata={META_KEY: json.dumps(self.meta), "format": FORMAT})
            tmp.chmod(0o644)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recording {path} does not exist")
        try:
            with safe_open(path, "pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); record it again") from e
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a minisd recording (no {FORMAT!r} in its metadata)")
        return cls(tensors, json.loads(metadata[META_KEY]))

    @property
    def steps(self) -> int:
        return len(self.meta["timesteps"])

    # Replay: each stage from the recording alone ------------------------------------------------------

    def inputs(self, stage: str, step: int | None = None) -> dict:
        """The arguments of one stage as recorded. Stages: "text_encoder" (the negative and the prompt's ids,
        which the pipeline encoded one at a time), "unet", "guidance", "scheduler" (step i; multistep samplers
        also need steps 0…i−1 replayed first), "vae" (decode to [0, 1])."""
        T, m = self.tensors, self.meta
        self._check(stage)
        if stage == "text_encoder":
            return {"input_ids": torch.cat([T["text/ids_uncond"], T["text/ids_cond"]])}
        if stage == "vae":
            return {"latents": T["vae/input"]}
        i = self._step(step)
        t = m["timesteps"][i]
        if stage == "unet":
            x_in = T[step_name(i, "model_input")]
            if "text/uncond" not in T:
                return {"sample": x_in, "timestep": t, "encoder_hidden_states": T["text/cond"]}
            context = torch.cat([T["text/uncond"], T["text/cond"]])
            return {"sample": torch.cat([x_in, x_in]), "timestep": t, "encoder_hidden_states": context}
        if stage == "guidance":
            names = ("eps_uncond", "eps_cond")
            return {n: T[step_name(i, n)] for n in names} | {"guidance_scale": m["settings"]["guidance_scale"]}
        return {"model_output": T[step_name(i, "eps")], "timestep": t, "sample": T[step_name(i, "x_t")]}

    def outputs(self, stage: str, step: int | None = None) -> dict[str, torch.Tensor]:
        """What the stage gave, as recorded (see ``inputs``)."""
        T = self.tensors
        self._check(stage)
        if stage == "text_encoder":
            return {"hidden_states": torch.cat([T["text/uncond"], T["text/cond"]])}
        if stage == "vae":
            return {"image": T["image/decoded"]}
        i = self._step(step)
        if stage == "unet":
            if "text/uncond" not in T:
                return {"noise_pred": T[step_name(i, "eps_cond")]}
            return {"noise_pred": torch.cat([T[step_name(i, "eps_uncond")], T[step_name(i, "eps_cond")]])}
        if stage == "guidance":
            return {"eps": T[step_name(i, "eps")]}
        return {"prev_sample": T[step_name(i, "x_prev")]} | (
            {"pred_original_sample": T[step_name(i, "pred_x0")]} if step_name(i, "pred_x0") in T else {}
        )

    @staticmethod
    def _check(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")

    def _step(self, step: int | None) -> int:
        if step is None or not 0 <= step < self.steps:
            raise ValueError(f"give step= a step index from 0 to {self.steps - 1}")
        return step


# ---------------------------------------------------------------------------------------------------------
# Recording: hooks on the parts of the networks, the loop's own trace for the steps


@contextmanager
def part_outputs(model: torch.nn.Module, parts: Iterable[str], prefix: str, sink: dict, when=lambda: True):
    """While active, store each named part's output (the first element of a tuple) in ``sink`` when
    ``when()`` holds. Parts given as "down_blocks" stand for each of their children: down_blocks.0, …"""
    modules = dict(model.named_modules())
    names = []
    for part in parts:
        if part not in modules:
            continue  # e.g. a VAE without post_quant_conv
        children = [f"{part}.{c}" for c, _ in modules[part].named_children()]
        names += children if isinstance(modules[part], torch.nn.ModuleList) else [part]

    def hook(name):
        def store(module, args, output):
            if when():
                sink[f"{prefix}/{name}"] = output[0] if isinstance(output, tuple) else output

        return store

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def environment(device, dtype) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()}",
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }


@dataclass
class Settings:
    """What a recording generates: ``text_to_image``'s arguments, and the step whose UNet parts are kept."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    block_step: int = 0  # 0, the first step: a wrong block shows there before anything else differs

    def __post_init__(self):
        if not 0 <= self.block_step < self.steps:
            raise ValueError(f"block_step {self.block_step} is not a step of {self.steps}; give 0 to {self.steps - 1}")


def record(prompt: str, weights: str | Path | None = None, pipe=None, **settings) -> Recording:
    """Generate one picture with minisd and record every intermediate (see the module docstring).

    ``weights``: as for ``load_pipeline`` (default: minisd-tiny); or pass a loaded ``pipe``.
    ``settings``: the fields of :class:`Settings` (negative_prompt, steps, guidance_scale, scheduler, ...).
    """
    from . import __version__
    from .pipeline import load_pipeline, make_generator, randn

    s = Settings(prompt, **settings)
    pipe = pipe or load_pipeline(weights)
    rec, parts, vae_parts, unet_calls, texts = Recording(), {}, {}, [], []
    ids = pipe.tokenizer([s.prompt]), pipe.tokenizer([s.negative_prompt])
    hooks = [
        pipe.unet.register_forward_pre_hook(lambda *_: unet_calls.append(None)),
        pipe.text_encoder.register_forward_hook(lambda m, a, out: texts.append(out)),
        pipe.vae.post_quant_conv.register_forward_pre_hook(lambda m, args: vae_parts.update(input=args[0])),
    ]

    def at_block_step() -> bool:
        return len(unet_calls) == s.block_step + 1

    try:
        with (
            part_outputs(pipe.unet, UNET_PARTS, "unet", parts, at_block_step),
            part_outputs(pipe.vae, VAE_PARTS, "vae", vae_parts),
        ):
            options = {k: v for k, v in asdict(s).items() if k != "block_step"}
            result = pipe.text_to_image(**options, trace=True, progress=False)
            image = pipe.unet_latents_to_images(result.latents)  # the picture before 8-bit rounding
    finally:
        for hook in hooks:
            hook.remove()

    rec.add("text/ids_cond", ids[0])
    rec.add("text/cond", texts[0])
    if s.guidance_scale > 1:
        rec.add("text/ids_uncond", ids[1])
        rec.add("text/uncond", texts[1])
    h, w = result.latents.shape[-2:]
    rec.add("noise/initial", randn((1, pipe.unet.config.in_channels, h, w), make_generator(s.seed), "cpu", pipe.dtype))
    for i, step in enumerate(result.trace):
        rec.add(step_name(i, "x_t"), step.x_t)
        rec.add(step_name(i, "model_input"), step.model_input)
        if i == s.block_step:
            for name, value in parts.items():
                rec.add(name, value)
        for what in STEP_OUTPUTS:
            if getattr(step, what) is not None:
                rec.add(step_name(i, what), getattr(step, what))
    rec.add("latents/final", result.latents)
    rec.add("vae/input", vae_parts.pop("input"))
    for name, value in vae_parts.items():
        rec.add(name, value)
    rec.add("image/decoded", image)
    rec.meta = {
        "engine": f"minisd {__version__}",
        "settings": asdict(s),
        "scheduler": pipe.make_scheduler(s.scheduler).name,
        "timesteps": result.timesteps,
        "model": {
            "weights": str(weights or os.environ.get("MINISD_WEIGHTS") or "minisd-tiny"),
            "hash": weights_hash(pipe.text_encoder, pipe.unet, pipe.vae),
        },
        "environment": environment(pipe.device, pipe.dtype),
    }
    return rec


# ---------------------------------------------------------------------------------------------------------
# Comparing two recordings


@dataclass
class Row:
    name: str
    max_abs: float
    rel: float  # ‖a − b‖ / ‖a‖
    ok: bool
    note: str = ""


@dataclass
class Report:
    rows: list[Row]
    rtol: float
    header: list[str]

    @property
    def first_failure(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    def __str__(self) -> str:
        lines = [*self.header, f"{'stage':<32} {'max abs':>10} {'relative':>10}"]
        for r in self.rows:
            mark = "✗ " if not r.ok else "  " if not r.note else "- "
            lines.append(f"{mark}{r.name:<30} {r.max_abs:>10.3g} {r.rel:>10.3g} {r.note}".rstrip())
        bad = self.first_failure
        lines.append(
            f"first stage past rtol {self.rtol:g}: {bad.name}" if bad else f"every stage within rtol {self.rtol:g}"
        )
        return "\n".join(lines)


def compare(a: Recording, b: Recording, rtol: float = 1e-4, atol: float = 0.0) -> Report:
    """Stage by stage, in A's data-flow order: max |a − b| and ‖a − b‖/‖a‖; a stage fails when its relative
    error exceeds ``rtol`` and its max abs error exceeds ``atol``, or when the shapes differ. A stage that
    only one recording holds is listed, not failed."""
    header = []
    for key in ("settings", "timesteps", "scheduler"):
        if a.meta.get(key) != b.meta.get(key):
            header.append(f"! {key} differ: {a.meta.get(key)} vs {b.meta.get(key)}")
    ha, hb = a.meta.get("model", {}).get("hash"), b.meta.get("model", {}).get("hash")
    header.append(f"A: {a.meta.get('engine')}, model {ha}; B: {b.meta.get('engine')}, model {hb}")
    if ha != hb:
        header.append("! the models' weights differ (hashes above)")
    rows = []
    for name in a.order + [n for n in b.order if n not in a.tensors]:
        if name not in a.tensors or name not in b.tensors:  # e.g. diffusers' PNDM reports no x̂0
            rows.append(Row(name, float("nan"), float("nan"), True, f"only in {'A' if name in a.tensors else 'B'}"))
            continue
        x, y = a.tensors[name].double(), b.tensors[name].double()
        if x.shape != y.shape:
            rows.append(Row(name, float("nan"), float("nan"), False, f"shapes {tuple(x.shape)} vs {tuple(y.shape)}"))
            continue
        diff = (x - y).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        rel = float((x - y).norm() / x.norm()) if x.norm() > 0 else max_abs
        rows.append(Row(name, max_abs, rel, not (rel > rtol and max_abs > atol)))
    return Report(rows, rtol, header)
