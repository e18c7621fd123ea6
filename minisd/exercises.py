"""Exercises that check themselves: write one piece of Stable Diffusion, and compare it with minisd's.

Each ``check_*`` runs your function and minisd's on the same random inputs and answers in plain words: right,
or where and by how much it differs. It returns True when every case agrees.

    from minisd.exercises import check_cfg
    check_cfg(lambda eps_uncond, eps_cond, scale: eps_uncond + scale * (eps_cond - eps_uncond))
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from .attention import attention
from .reference import RECORDINGS, Recording
from .schedulers import make_scheduler
from .tokenizer import load_tokenizer


def _compare(what: str, yours, ours: torch.Tensor, case: str, rtol: float = 1e-4) -> bool:
    """Print the first difference of ``yours`` from ``ours`` in plain words; True when they agree."""
    if not isinstance(yours, torch.Tensor):
        print(
            f"✗ {what}: your function returned a {type(yours).__name__}, expected a tensor of shape {tuple(ours.shape)}"
        )
        return False
    if yours.shape != ours.shape:
        print(f"✗ {what} ({case}): your result has shape {tuple(yours.shape)}, expected {tuple(ours.shape)}")
        return False
    error = (yours.float() - ours.float()).abs()
    scale = ours.float().abs().max().clamp(min=1e-12)
    if error.max() <= rtol * scale:
        return True
    where = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    print(
        f"✗ {what} ({case}): differs at index {where}: yours {yours.flatten()[error.argmax()].item():.5g}, "
        f"expected {ours.flatten()[error.argmax()].item():.5g} (largest difference {error.max().item():.3g}, "
        f"{(error > rtol * scale).float().mean().item():.0%} of the values off)"
    )
    return False


def _run(what: str, cases: list[tuple[str, Callable[[], tuple]]]) -> bool:
    for case, make in cases:
        yours, ours = make()
        if not _compare(what, yours, ours, case):
            return False
    print(f"✓ {what}: right on all {len(cases)} case{'s' if len(cases) != 1 else ''}.")
    return True


def check_add_noise(your_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``your_fn(x0, noise, alpha_bar)`` -> x_t of q(x_t | x0), with ``alpha_bar`` = ᾱ_t as a 0-d tensor."""
    sched, g = make_scheduler("ddpm"), torch.Generator().manual_seed(0)

    def case(t: int):
        x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        return lambda: (your_fn(x0, noise, sched.alphas_cumprod[t]), sched.add_noise(x0, noise, t))

    return _run("add_noise", [(f"t = {t}", case(t)) for t in (0, 10, 500, 999)])


def check_cfg(your_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """``your_fn(eps_uncond, eps_cond, scale)`` -> the guided noise prediction of classifier-free guidance."""
    g = torch.Generator().manual_seed(1)

    def case(scale: float):
        u, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        return lambda: (your_fn(u, c, scale), u + scale * (c - u))

    if not _run("classifier-free guidance", [(f"scale {s}", case(s)) for s in (0.0, 1.0, 3.0, 7.5)]):
        return False
    return check_recorded("guidance", your_fn)


def check_recorded(stage: str, your_fn: Callable, recording: str | None = None) -> bool:
    """Run ``your_fn`` on the inputs of one stage of a reference recording, every step in order, and compare
    with what minisd gave (see minisd/reference.py). Default: minisd-tiny's 25-step DDIM recording.

    text_encoder: your_fn(input_ids) -> (2B, 77, width)    unet: your_fn(sample, timestep, context) -> ε
    guidance: your_fn(eps_uncond, eps_cond, scale) -> ε    scheduler: your_fn(eps, timestep, x_t) -> x_{t−1}
    vae: your_fn(latents) -> image in [0, 1], from the latents the VAE decoder gets (already unscaled)
    """
    path = recording or RECORDINGS / "minisd-tiny-ddim-pair.safetensors"
    rec = Recording.load(path)
    steps = range(rec.steps) if stage in ("unet", "guidance", "scheduler") else [None]

    def case(step):
        inputs, outputs = rec.inputs(stage, step), rec.outputs(stage, step)
        return lambda: (your_fn(*inputs.values()), next(iter(outputs.values())))

    return _run(f"{stage} on {Path(path).name}", [(f"step {k}" if k is not None else stage, case(k)) for k in steps])


def check_attention(your_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``your_fn(q, k, v)`` -> softmax(q kᵀ / √d) v, for q (B, heads, Nq, d) and k, v (B, heads, Nk, d)."""
    g = torch.Generator().manual_seed(2)

    def case(nq: int, nk: int, d: int):
        q, k, v = (torch.randn(2, 3, n, d, generator=g) for n in (nq, nk, nk))
        return lambda: (your_fn(q, k, v), attention(q, k, v)[0])

    cases = [(n, m, d) for n, m, d in ((16, 16, 8), (64, 77, 40), (5, 3, 64))]
    return _run("attention", [(f"{n} queries, {m} keys, d = {d}", case(n, m, d)) for n, m, d in cases])


def check_ddim_step(your_fn: Callable[..., torch.Tensor]) -> bool:
    """``your_fn(x_t, eps, alpha_bar_t, alpha_bar_prev)`` -> x_{t−1} of a deterministic DDIM step (η = 0)."""
    sched, g = make_scheduler("ddim"), torch.Generator().manual_seed(3)
    sched.set_timesteps(20)

    def case(t: int):
        x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        prev = sched.previous_timestep(t)
        a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
        return lambda: (your_fn(x, eps, sched.alphas_cumprod[t], a_prev), sched.step(eps, t, x).prev_sample)

    ts = [int(t) for t in sched.timesteps[[0, 5, 19]]]
    return _run("DDIM step", [(f"t = {t}", case(t)) for t in ts])


def check_bpe(your_fn: Callable[[str, dict[tuple[str, str], int]], list[str]]) -> bool:
    """``your_fn(word, merge_rank)`` -> the word's BPE symbols: start from its characters, the last one with
    ``</w>`` appended, and merge the adjacent pair of lowest rank until no pair has a rank."""
    tok = load_tokenizer()
    rng = random.Random(4)
    words = ["astronaut", "horse", "riding", "a", "photograph", "unbelievably", "zzyzx"]
    words += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))) for _ in range(8)]
    for word in words:
        yours, ours = your_fn(word, tok.merge_rank), tok.bpe(word)
        if list(yours) != ours:
            print(f"✗ BPE of {word!r}: yours {list(yours)}, expected {ours}")
            return False
    print(f"✓ BPE: right on all {len(words)} words.")
    return True
