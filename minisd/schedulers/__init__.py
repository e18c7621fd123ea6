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

Each sampler is checked step for step against its diffusers counterpart (tests/test_schedulers.py). Where
diffusers has quirks they are matched, except where it crashes or reads a wrong entry: ``QUIRKS.md`` beside
this file lists each case and what minisd does there.
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
