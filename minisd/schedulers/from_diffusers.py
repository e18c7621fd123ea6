"""diffusers' scheduler configs, read as diffusers reads them: which entry a sampler takes, and from where.

A diffusers ``scheduler_config.json`` names a class and lists some of its ``__init__`` arguments. Every
argument it leaves out takes the default of the class that reads it, and the six classes differ there:
DDPM/DDIM/PNDM space timesteps "leading", Euler, Euler ancestral and DPM-Solver++ "linspace"; DDIM sets ᾱ
to 1 after the last step, PNDM does not; PNDM warms up with Runge–Kutta steps unless told to skip them.
``read_config`` holds the rule; every argument of the six classes is listed below as implemented (a field
of SchedulerConfig), refused unless at a value minisd runs (REFUSED), or without effect here (IGNORED).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import CheckpointError
from .schedule import SchedulerConfig

# diffusers' scheduler classes, as a scheduler_config.json's _class_name names them, to minisd's names.
SCHEDULER_CLASSES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}

# Each class's __init__ arguments and their defaults there (diffusers 0.42; tests/test_schedulers.py checks).
_NOISE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
_NOISE |= {"trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0}
_THRESHOLDING = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
_SIGMA_RAMPS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_LEADING = {"timestep_spacing": "leading", "rescale_betas_zero_snr": False}
_LINSPACE = {"timestep_spacing": "linspace", "rescale_betas_zero_snr": False}
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddpm": {**_NOISE, **_THRESHOLDING, **_LEADING, "clip_sample": True, "clip_sample_range": 1.0,
             "variance_type": "fixed_small"},
    "ddim": {**_NOISE, **_THRESHOLDING, **_LEADING, "clip_sample": True, "clip_sample_range": 1.0,
             "set_alpha_to_one": True},
    "pndm": {**_NOISE, "timestep_spacing": "leading", "skip_prk_steps": False, "set_alpha_to_one": False},
    "euler": {**_NOISE, **_SIGMA_RAMPS, **_LINSPACE, "final_sigmas_type": "zero", "timestep_type": "discrete",
              "interpolation_type": "linear", "sigma_min": None, "sigma_max": None},
    "euler_ancestral": {**_NOISE, **_LINSPACE},
    "dpmpp_2m": {**_NOISE, **_THRESHOLDING, **_SIGMA_RAMPS, **_LINSPACE, "final_sigmas_type": "zero",
                 "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "variance_type": None,
                 "lower_order_final": True, "euler_at_final": False, "lambda_min_clipped": -math.inf,
                 "use_lu_lambdas": False, "use_flow_sigmas": False, "flow_shift": 1.0,
                 "use_dynamic_shifting": False, "time_shift_type": "exponential"},
}  # fmt: skip
# Read by a class although not its arguments: DPM-Solver takes Karras σ bounds from any config entry so named.
READ_IF_PRESENT = {"dpmpp_2m": ("sigma_min", "sigma_max")}

# Arguments that change the result, implemented here at these values only: any other is refused.
REFUSED: dict[str, tuple] = {
    "trained_betas": (None,),
    "rescale_betas_zero_snr": (False,),
    "thresholding": (False,),
    "variance_type": ("fixed_small", None),  # DDPM; DPM-Solver: see below
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),  # "continuous" changes Euler under v_prediction only; refused throughout
    "use_exponential_sigmas": (False, None),
    "use_beta_sigmas": (False, None),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "solver_order": (2,),
    "algorithm_type": ("dpmsolver++",),
    "solver_type": ("midpoint", "logrho", "bh1", "bh2"),  # DPM-Solver turns DEIS/UniPC's types into "midpoint"
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "lambda_min_clipped": (-math.inf,),
    "use_dynamic_shifting": (False,),  # a time shift passed to each set_timesteps call (mu)
}
# DPM-Solver reads variance_type only to drop a learned variance's channels; DDPM's other kinds change nothing.
REFUSED_BY_CLASS = {
    "dpmpp_2m": {"variance_type": (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")}
}


def read_config(name: str, config: Mapping[str, Any] | SchedulerConfig | None = None) -> SchedulerConfig:
    """Sampler ``name``'s settings from ``config``, as diffusers' ``Class.from_config(config)`` sets them.

    diffusers' rule (ConfigMixin.extract_init_dict, 0.42): the class takes each of its arguments that the
    config holds, and its own default for every other one. An entry listed in the config's
    ``_use_default_values`` counts as absent: diffusers lists there, in ``scheduler.config``, the arguments
    the file it read left out, so that ``Class.from_config(pipe.scheduler.config)`` and
    ``Class.from_config(json.load(file))`` agree. Entries the class does not take are carried along for the
    next class, unused.

    Example: SD v1.5's scheduler_config.json (PNDMScheduler, written by diffusers 0.6) has no
    timestep_spacing, so PNDM runs "leading" (its default) but ``EulerDiscreteScheduler.from_config`` of it,
    or of ``pipe.scheduler.config``, runs "linspace" (Euler's); so does ``make_scheduler("euler", it)``.

    ``None`` is SD v1.5's schedule; a SchedulerConfig written in minisd (``given`` None) is used as it is.
    """
    if config is None:
        return SchedulerConfig()
    if isinstance(config, SchedulerConfig):
        if config.given is None:
            return config
        config = config.given
    elif not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a SchedulerConfig, got {type(config).__name__}")
    left_out = config.get("_use_default_values") or ()
    given = {k: v for k, v in config.items() if not k.startswith("_") and k not in left_out}
    taken = {k: given.get(k, default) for k, default in CLASS_DEFAULTS[name].items()}
    taken |= {k: given[k] for k in READ_IF_PRESENT.get(name, ()) if k in given}
    settings = SchedulerConfig.from_dict(taken, fixed=REFUSED | REFUSED_BY_CLASS.get(name, {}), owner=name)
    settings.given = given
    return settings


def read_model_folder(path: Path) -> tuple[str, dict[str, Any] | None]:
    """The sampler a model folder's ``scheduler/scheduler_config.json`` names, and the config to read for it.

    No file (a single checkpoint): SD v1.5's PNDM, config None. A class minisd lacks: PNDM as SD runs it
    (PLMS) on the file's entries, with a warning; another sampler chosen later reads the file as its own class.
    """
    folder = path / "scheduler" if path.is_dir() else None
    if folder is None or not (folder / "scheduler_config.json").is_file():
        if path.is_dir() and (path / "model_index.json").is_file():
            raise CheckpointError(f"{path} has no scheduler/scheduler_config.json; re-download the model folder")
        return "pndm", None
    config = json.loads((folder / "scheduler_config.json").read_text())
    class_name = config.get("_class_name", "")
    if class_name not in SCHEDULER_CLASSES:
        warnings.warn(
            f"the model's scheduler {class_name!r} is not implemented; using PNDM (PLMS) on its noise schedule. "
            f"Pick another with scheduler= ({', '.join(SCHEDULER_CLASSES.values())})",
            stacklevel=4,
        )
        return "pndm", config | {"skip_prk_steps": True}
    return SCHEDULER_CLASSES[class_name], config
