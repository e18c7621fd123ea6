"""The scheduling algorithm: how noise is added in training, and how each step of sampling removes some.

Forward process (Ho et al. 2020, eq. 4): a clean latent x0 becomes, at training step t ∈ [0, T),

    x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε,    ε ~ N(0, I),    ᾱ_t = Π_{s ≤ t} (1 − β_s).

The same noise level read as a "variance exploding" scale is σ_t = √((1 − ᾱ_t) / ᾱ_t): x_t / √ᾱ_t = x0 + σ_t ε.
DDPM, DDIM and PNDM walk the ᾱ_t chain; Euler, Euler ancestral and DPM-Solver++ walk σ.

Every sampler is a small class with the same API::

    sched = make_scheduler("ddim")                 # SD v1.5's schedule
    sched = make_scheduler("euler", config)        # EulerDiscreteScheduler.from_config(config): see below
    sched.set_timesteps(50)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        step = sched.step(unet(sched.scale_model_input(x, t), t), t, x, generator=g)
        x, x0 = step.prev_sample, step.pred_original_sample      # x_{t−1} and the current guess of x0

A diffusers config (a scheduler_config.json's dict, or diffusers' ``scheduler.config``) is read as diffusers'
``Class.from_config`` reads it: an entry the config leaves out takes the default of the diffusers class the
sampler stands for, which differs between classes (``from_diffusers.read_config``). An entry minisd does not
implement is refused unless it is at a value minisd runs.

Each sampler is checked step for step against its diffusers counterpart (tests/test_schedulers.py), down to where the
reference has quirks. Those are matched, except where diffusers crashes or reads a wrong entry:

* DDIM and PNDM take the previous timestep as t − T // n under every spacing; under "linspace" (and "trailing"
  when n does not divide T) that is not the next entry of ``timesteps``. Matched (see ``DDIM.previous_timestep``).
* "trailing" spacing builds ``np.arange(T, 0, -T/n)``, whose float step yields n + 1 timesteps, the last one −1,
  for some n (61, 103, 121, ...). Matched. At t = −1 diffusers' DDPM/DDIM/PNDM read ᾱ[−1], i.e. ᾱ_{T−1}
  (Python's wrap-around); here ᾱ_t is read at t clamped to [0, T − 1], as np.interp gives the sigma samplers.
* "leading" with steps_offset = 1 and n = T starts at t = T: diffusers' DDPM/DDIM/PNDM raise IndexError;
  here the clamp reads ᾱ_{T−1}.
* DPM-Solver's "leading" spacing divides T by n + 1, so n ≥ T puts every timestep at steps_offset (steps of
  size 0, hence NaN, would follow); here ``set_timesteps`` raises a ValueError instead.
* DPM-Solver's Karras timesteps are truncated, not rounded, under squaredcos_cap_v2. Matched.
* Before ``set_timesteps``, diffusers' DPM-Solver ``add_noise`` pairs t with σ at T − 1 − t (its σ table is
  stored ascending); here it uses σ_t.
* PNDM's Runge–Kutta warm-up (skip_prk_steps false) needs 4 timesteps: diffusers fails on fewer with a
  broadcasting error; here ``set_timesteps`` raises a ValueError. Started past its first timestep
  (image-to-image), diffusers counts the Runge–Kutta stages from its step count and silently reads the wrong
  timesteps; here ``step`` raises a ValueError.
* When the first timestep appears twice, diffusers starts at its second occurrence; here at the first. Only
  degenerate schedules repeat it: the DPM case above, and DPM-Solver's Karras σ under squaredcos_cap_v2,
  whose first timesteps all truncate to 998 and where diffusers overruns its σ table on the last step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .alpha_bar import DDIM, DDPM, PNDM
from .from_diffusers import SCHEDULER_CLASSES, read_config, read_model_folder
from .schedule import Scheduler, SchedulerConfig, StepOutput
from .sigma import DPMSolverPP2M, Euler, EulerAncestral, SigmaScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (DDPM, DDIM, PNDM, Euler, EulerAncestral, DPMSolverPP2M)
}


def make_scheduler(name: str, config: Mapping[str, Any] | SchedulerConfig | None = None) -> Scheduler:
    """A sampler by name: SD v1.5's schedule, or a diffusers config read as ``Class.from_config`` reads it."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of " + ", ".join(map(repr, SCHEDULERS)))
    return SCHEDULERS[name](read_config(name, config))


def load_scheduler(path: Path) -> Scheduler:
    """A model folder's sampler, as its ``scheduler/scheduler_config.json`` says; SD v1.5's for a single file."""
    return make_scheduler(*read_model_folder(path))


__all__ = [
    "DDIM",
    "DDPM",
    "PNDM",
    "SCHEDULERS",
    "SCHEDULER_CLASSES",
    "DPMSolverPP2M",
    "Euler",
    "EulerAncestral",
    "Scheduler",
    "SchedulerConfig",
    "SigmaScheduler",
    "StepOutput",
    "load_scheduler",
    "make_scheduler",
]
