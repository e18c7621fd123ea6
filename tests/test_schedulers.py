"""The samplers against diffusers' schedulers: same config, same stand-in model, same seeds, step for step."""

from __future__ import annotations

import dataclasses
import inspect

import diffusers
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.training_utils import compute_snr

from minisd.schedulers import SCHEDULERS, SchedulerConfig, StepOutput, make_scheduler
from minisd.schedulers.from_diffusers import CLASS_DEFAULTS, READ_IF_PRESENT, REFUSED

from .conftest import max_rel_err
from .tiny_sd import SD15_SCHEDULER_FILE as SD15_JSON

# diffusers' schedulers call np.array on tensors in a way numpy 2 flags; that noise is theirs, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TOL = 1e-5
SHAPE = (2, 4, 8, 8)
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")
SIGMA_BASED = ("euler", "euler_ancestral", "dpmpp_2m")
KARRAS = ("euler", "dpmpp_2m")  # the two with use_karras_sigmas
REFERENCE = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
# Everything minisd's default config means, spelled out for diffusers (whose class defaults differ), as a
# diffusers config: every entry given, so that every class reads SD v1.5's settings from it.
SD15 = {**SD15_JSON, "timestep_spacing": "leading", "prediction_type": "epsilon"}


def sd15_scheduler(name: str, **overrides):
    """minisd's sampler for ``name`` with SD v1.5's config plus overrides, every entry written out."""
    return make_scheduler(name, {**SD15, **overrides})


def reference(name: str, **overrides):
    """diffusers' scheduler for ``name`` with SD v1.5's config plus overrides."""
    cls = REFERENCE[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in {**SD15, **overrides}.items() if k in accepted})


def clamped(ref, name: str):
    """diffusers' scheduler with ᾱ readable at t = T (as ᾱ_{T−1}) and at t = −1 (as ᾱ_0), as minisd clamps.

    Only the ᾱ samplers index ᾱ by timestep; the σ samplers interpolate, clamping the same way already.
    """
    if name in ("ddpm", "ddim", "pndm"):
        ac = ref.alphas_cumprod
        ref.alphas_cumprod = torch.cat([ac, ac[-1:], ac[:1]])
    return ref


def clamped_reference(name: str, **overrides):
    return clamped(reference(name, **overrides), name)


def model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth, deterministic stand-in for the UNet: its ε (or v) prediction from x and t."""
    s = float(t) / 1000
    return torch.tanh(x) * (0.8 - 0.3 * s) + 0.2 * torch.sin(3 * x + 5 * s)


def reference_x0(name, sched, out, model_output, t, x) -> torch.Tensor:
    """diffusers' x̂0 for the step just taken (PNDM and DPM-Solver do not return one)."""
    if name == "dpmpp_2m":
        return sched.model_outputs[-1]  # its x̂0, stored for the multistep update
    if name == "pndm":
        ab = sched.alphas_cumprod[int(t)]
        if sched.config.prediction_type == "epsilon":
            return (x - (1 - ab) ** 0.5 * model_output) / ab**0.5
        return ab**0.5 * x - (1 - ab) ** 0.5 * model_output
    return out.pred_original_sample


def trajectory(name, sched, n, seed, shape=SHAPE, *, start=0, begin_at_first=True, **step_kwargs):
    """Run a sampling loop: every step's (x_{t−1}, x̂0), then the generator's state (how much noise was drawn).

    With ``start``, the loop starts at that step from a clean latent noised to it (image-to-image).
    """
    sched.set_timesteps(n)
    is_reference = isinstance(sched, tuple(REFERENCE.values()))
    if is_reference and begin_at_first and len(sched.timesteps) > 1 and sched.timesteps[0] == sched.timesteps[1]:
        sched.set_begin_index(0)  # else diffusers starts at the repeat and overruns (test_repeated_first_timestep)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1234))
    timesteps = sched.timesteps[start:]
    if start:  # image-to-image: q(x_t | x0) at the first timestep run
        x = sched.add_noise(torch.randn(shape, generator=torch.Generator().manual_seed(99)), noise, timesteps[:1])
    else:
        x = noise * sched.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs["generator"] = g
    steps = []
    for t in timesteps:
        model_output = model(sched.scale_model_input(x, t), t)
        out = sched.step(model_output, t, x, **step_kwargs)
        x0 = reference_x0(name, sched, out, model_output, t, x) if is_reference else out.pred_original_sample
        x = out.prev_sample
        steps.append((x, x0))
    return steps, g.get_state()


def trajectory_error(
    name,
    n=12,
    config=None,
    step_kwargs=None,
    *,
    seed=0,
    ref_seed=0,
    ref_config=None,
    ref_step_kwargs=None,
    shape=SHAPE,
    start=0,
    pair=None,
) -> float:
    """max over steps of max|ours − diffusers| / max|diffusers|, for samples and x̂0 alike.

    ``pair``: the two schedulers (minisd's, diffusers'), built by the caller, instead of SD v1.5's plus config.
    """
    same_run = seed == ref_seed and ref_config is None and ref_step_kwargs is None
    config = config or {}
    ref_config = config if ref_config is None else ref_config
    ref_step_kwargs = step_kwargs if ref_step_kwargs is None else ref_step_kwargs
    mine, ref = pair or (sd15_scheduler(name, **config), clamped_reference(name, **ref_config))
    ours_steps, rng = trajectory(name, mine, n, seed, shape, start=start, **(step_kwargs or {}))
    theirs, ref_rng = trajectory(name, ref, n, ref_seed, shape, start=start, **(ref_step_kwargs or {}))
    if same_run:  # the same noise drawn, even where it is scaled to nothing (DDPM's last step)
        assert torch.equal(rng, ref_rng)
    return max(
        max_rel_err(a, b)
        for step_a, step_b in zip(ours_steps, theirs, strict=True)
        for a, b in zip(step_a, step_b, strict=True)
    )


def _cases():
    for p in PREDICTIONS:
        for s in SPACINGS:
            cfg = {"timestep_spacing": s, "prediction_type": p}
            yield "ddpm", cfg, {}
            for eta in (0.0, 1.0):
                yield "ddim", cfg, {"eta": eta}
            yield "pndm", cfg, {}
            yield "pndm", {**cfg, "skip_prk_steps": False}, {}  # Runge–Kutta warm-up, then PLMS
            yield "euler_ancestral", cfg, {}
            for k in (False, True):
                yield "euler", {**cfg, "use_karras_sigmas": k}, {}
                yield "dpmpp_2m", {**cfg, "use_karras_sigmas": k}, {}
    yield "ddpm", {"clip_sample": True}, {}
    yield "ddim", {"clip_sample": True, "set_alpha_to_one": True}, {"eta": 0.5}
    yield "pndm", {"set_alpha_to_one": True, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}, {}
    yield "pndm", {"skip_prk_steps": False, "set_alpha_to_one": True, "beta_schedule": "squaredcos_cap_v2"}, {}
    yield "euler", {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, {}
    yield "euler", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, {}
    yield "dpmpp_2m", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, {}
    yield "dpmpp_2m", {"final_sigmas_type": "sigma_min"}, {}  # a first-order last step only when n < 15
    yield "dpmpp_2m", {"final_sigmas_type": "sigma_min", "lower_order_final": False}, {}
    yield "dpmpp_2m", {"final_sigmas_type": "sigma_min", "euler_at_final": True}, {}


CASES = list(_cases())


def _id(case) -> str:
    name, cfg, kw = case
    return "-".join([name, *(f"{k}={v}" for k, v in {**cfg, **kw}.items())])


@pytest.mark.parametrize("n", [12, 20])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_trajectory_matches_diffusers(case, n):
    name, config, step_kwargs = case
    assert trajectory_error(name, n, config, step_kwargs) <= TOL


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_few_step_trajectory_matches_diffusers(name, spacing, n):
    assert trajectory_error(name, n, {"timestep_spacing": spacing}) <= TOL


@pytest.mark.parametrize("n", [4, 5, 7])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_runge_kutta_few_steps_match_diffusers(spacing, n):
    """From 4 steps, the fewest PNDM's warm-up takes: three Runge–Kutta steps (12 calls), then PLMS."""
    assert trajectory_error("pndm", n, {"timestep_spacing": spacing, "skip_prk_steps": False}) <= TOL


def test_runge_kutta_needs_four_steps():
    """diffusers fails on fewer (a numpy broadcasting error); minisd says why."""
    ref = reference("pndm", skip_prk_steps=False)
    with pytest.raises(ValueError, match="could not be broadcast"):
        ref.set_timesteps(3)
    with pytest.raises(ValueError, match="needs at least 4 steps, got 3"):
        sd15_scheduler("pndm", skip_prk_steps=False).set_timesteps(3)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_image_to_image_trajectory_matches_diffusers(name, karras):
    """Start at the 9th of 20 steps from a noised clean latent: add_noise, then the step found from t."""
    assert trajectory_error(name, 20, {"use_karras_sigmas": karras}, start=8) <= TOL


def test_runge_kutta_must_start_at_the_first_timestep():
    """Started past its first step (image-to-image), diffusers counts the Runge–Kutta stages from its step count
    and takes each step's start from its own list (t = 951 here, for a loop that starts at 851), silently;
    minisd refuses instead."""
    config = {"skip_prk_steps": False}
    ref = reference("pndm", **config)
    trajectory("pndm", ref, 20, 0, start=8)
    assert ref.prk_timesteps[0] == 951 and ref.timesteps[8] == 851
    with pytest.raises(ValueError, match="Runge-Kutta steps start at the first timestep"):
        trajectory("pndm", sd15_scheduler("pndm", **config), 20, 0, start=8)
    trajectory("pndm", sd15_scheduler("pndm", **config), 20, 0)  # from the first: no error


NEGATIVE = [
    ("ddpm", {}, {}, {"ref_seed": 1}),
    ("ddim", {}, {"eta": 1.0}, {"ref_step_kwargs": {"eta": 0.0}}),
    ("ddim", {}, {"eta": 1.0}, {"ref_seed": 1}),
    ("pndm", {"prediction_type": "v_prediction"}, {}, {"ref_config": {"prediction_type": "epsilon"}}),
    ("pndm", {"skip_prk_steps": False}, {}, {"ref_config": {"skip_prk_steps": False, "set_alpha_to_one": True}}),
    ("euler", {"use_karras_sigmas": True}, {}, {"ref_config": {"use_karras_sigmas": False}}),
    ("euler_ancestral", {}, {}, {"ref_seed": 1}),
    ("dpmpp_2m", {"use_karras_sigmas": True}, {}, {"ref_config": {"use_karras_sigmas": False}}),
    ("dpmpp_2m", {"timestep_spacing": "trailing"}, {}, {"ref_config": {"timestep_spacing": "leading"}}),
]


@pytest.mark.parametrize("case", NEGATIVE, ids=[f"{c[0]}-{'-'.join(c[3])}" for c in NEGATIVE])
def test_trajectory_negative_control(case):
    """A wrong seed, eta or config must fail the tolerance by far: the comparison can fail."""
    name, config, step_kwargs, mismatch = case
    assert trajectory_error(name, 12, config, step_kwargs, **mismatch) > 100 * TOL


# --------------------------------------------------------------------------------------------------------------
# Timesteps and sigmas


def _schedule_cases():
    for name in SCHEDULERS:
        for spacing in SPACINGS:
            yield name, {"timestep_spacing": spacing}
            if name in KARRAS:
                yield name, {"timestep_spacing": spacing, "use_karras_sigmas": True}
    for name in KARRAS:
        yield name, {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
        yield name, {"final_sigmas_type": "sigma_min"}
    for spacing in SPACINGS:
        yield "pndm", {"timestep_spacing": spacing, "skip_prk_steps": False}
    yield "ddim", {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "steps_offset": 0}


SCHEDULE_CASES = list(_schedule_cases())


def assert_same_schedule(ours, ref, name):
    assert ours.timesteps.dtype == ref.timesteps.dtype
    assert torch.equal(ours.timesteps, ref.timesteps)
    if name in SIGMA_BASED:
        assert torch.equal(ours.sigmas, ref.sigmas)
        assert ours.init_noise_sigma == float(ref.init_noise_sigma)
    else:
        assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 13, 20, 50, 999, 1000])
@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=[_id((*c, {})) for c in SCHEDULE_CASES])
def test_timesteps_and_sigmas_match(case, n):
    name, config = case
    ours, ref = sd15_scheduler(name, **config), reference(name, **config)
    assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    if config.get("skip_prk_steps") is False and n < 4:
        return  # test_runge_kutta_needs_four_steps
    ref.set_timesteps(n)
    if name == "dpmpp_2m" and config.get("timestep_spacing", "leading") == "leading" and n == 1000:
        with pytest.raises(ValueError, match="fewer than 1000 steps"):  # diffusers: all timesteps = 1
            ours.set_timesteps(n)
        return
    ours.set_timesteps(n)
    assert_same_schedule(ours, ref, name)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", [*SCHEDULERS, "pndm-runge-kutta"])
def test_timesteps_match_for_every_n(name, spacing):
    """Every n from 1 to T (but DPM-Solver's degenerate "leading" n = T: test_thousand_leading_steps)."""
    config = {"timestep_spacing": spacing}
    if name == "pndm-runge-kutta":  # from 4 steps: test_runge_kutta_needs_four_steps
        name, config = "pndm", {**config, "skip_prk_steps": False}
    ours, ref = sd15_scheduler(name, **config), reference(name, **config)
    first = 1 if config.get("skip_prk_steps", True) else 4
    last = 999 if name == "dpmpp_2m" and spacing == "leading" else 1000
    for n in range(first, last + 1):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_same_schedule(ours, ref, name)


def test_default_config_is_sd15():
    """make_scheduler(name) is diffusers' class given SD v1.5's schedule, with SD's "leading" spacing throughout;
    SD v1.5's own file, read as PNDM, gives that config. (Other samplers read from that file take their own
    class defaults for what it leaves out: test_make_scheduler_is_from_config.)"""
    assert make_scheduler("pndm", SD15_JSON).config == SchedulerConfig()
    for name in SCHEDULERS:
        sched, ref = make_scheduler(name), reference(name)
        assert torch.equal(sched.alphas_cumprod, ref.alphas_cumprod)
        sched.set_timesteps(50)
        ref.set_timesteps(50)
        assert_same_schedule(sched, ref, name)


# --------------------------------------------------------------------------------------------------------------
# Reading diffusers configs: make_scheduler(name, config) is Class.from_config(config)

# An Euler file as SDXL-era models ship it: every entry written, including other classes' ("skip_prk_steps").
EULER_JSON = {
    **{k: v for k, v in SD15_JSON.items() if k != "_diffusers_version"},
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
# Entries SD v1.5's file lacks, each at a value other than some class's default.
OPTIONAL = {
    "timestep_spacing": "trailing",
    "prediction_type": "v_prediction",
    "use_karras_sigmas": True,
    "final_sigmas_type": "sigma_min",
    "lower_order_final": False,
    "euler_at_final": True,
    "clip_sample_range": 0.5,
}


def _from_config_cases():
    yield "sd15", SD15_JSON
    yield "euler-file", EULER_JSON
    yield "empty", {}
    for key in SD15_JSON:
        if not key.startswith("_"):
            yield f"sd15-without-{key}", {k: v for k, v in SD15_JSON.items() if k != key}
    for key, value in OPTIONAL.items():
        yield f"sd15-{key}={value}", {**SD15_JSON, key: value}
    yield "sd15-clip_sample=True-set_alpha_to_one=True", {**SD15_JSON, "clip_sample": True, "set_alpha_to_one": True}
    yield "sd15-timestep_spacing=leading", {**SD15_JSON, "timestep_spacing": "leading"}


FROM_CONFIG = list(_from_config_cases())


@pytest.mark.parametrize("loaded", [False, True], ids=["json", "loaded"])
@pytest.mark.parametrize("config", [c for _, c in FROM_CONFIG], ids=[i for i, _ in FROM_CONFIG])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_make_scheduler_is_from_config(name, config, loaded):
    """make_scheduler(name, config) against diffusers' Class.from_config(config): timesteps, σ and a trajectory.

    ``loaded``: the config as diffusers holds it after loading the file with the class it names
    (``pipe.scheduler.config``, which lists the entries left out in ``_use_default_values``).
    """
    if loaded:
        config = getattr(diffusers, config.get("_class_name", "PNDMScheduler")).from_config(config).config
    mine, ref = make_scheduler(name, config), clamped(REFERENCE[name].from_config(config), name)
    for n in (12, 50):
        mine.set_timesteps(n)
        ref.set_timesteps(n)
        assert_same_schedule(mine, ref, name)
    assert trajectory_error(name, 12, pair=(mine, ref)) <= TOL


def test_use_default_values_is_read():
    """diffusers' scheduler.config carries the file's defaults, listed as such: they are not the file's."""
    loaded = PNDMScheduler.from_config(SD15_JSON).config
    assert loaded["timestep_spacing"] == "leading" and "timestep_spacing" in loaded["_use_default_values"]
    assert make_scheduler("euler", loaded).config.timestep_spacing == "linspace"
    assert make_scheduler("euler", dict(loaded)).config.timestep_spacing == "linspace"
    assert make_scheduler("euler", {**loaded, "_use_default_values": []}).config.timestep_spacing == "leading"


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_swaps_chain_as_in_diffusers(name):
    """A sampler made from another one's config reads the first file, as Class.from_config(other.config) does."""
    euler = make_scheduler("euler", SD15_JSON)
    ref_euler = EulerDiscreteScheduler.from_config(PNDMScheduler.from_config(SD15_JSON).config)
    mine, ref = make_scheduler(name, euler.config), clamped(REFERENCE[name].from_config(ref_euler.config), name)
    assert mine.config == make_scheduler(name, SD15_JSON).config
    assert trajectory_error(name, 12, pair=(mine, ref)) <= TOL


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_diffusers_argument_is_accounted_for(name):
    """Each __init__ argument of the diffusers class: its default listed, and implemented, refused or ignored."""
    params = inspect.signature(REFERENCE[name].__init__).parameters
    assert CLASS_DEFAULTS[name] == {k: p.default for k, p in params.items() if k != "self"}
    fields = {f.name for f in dataclasses.fields(SchedulerConfig) if f.init}
    for key in [*CLASS_DEFAULTS[name], *READ_IF_PRESENT.get(name, ())]:
        assert (key in fields) + (key in REFUSED) + (key in SchedulerConfig.IGNORED) == 1, key
    assert make_scheduler(name, CLASS_DEFAULTS[name]).config == make_scheduler(name, {}).config


# A value of each refused entry that changes diffusers' result.
UNIMPLEMENTED = {
    "trained_betas": [0.01] * 1000,
    "rescale_betas_zero_snr": True,
    "thresholding": True,
    "variance_type": "learned_range",
    "interpolation_type": "log_linear",
    "timestep_type": "continuous",
    "use_exponential_sigmas": True,
    "use_beta_sigmas": True,
    "sigma_min": 0.1,
    "sigma_max": 10.0,
    "solver_order": 3,
    "algorithm_type": "sde-dpmsolver++",
    "solver_type": "heun",
    "use_lu_lambdas": True,
    "use_flow_sigmas": True,
    "lambda_min_clipped": -5.1,
    "use_dynamic_shifting": True,
}
REFUSALS = [
    (name, key)
    for name in SCHEDULERS
    for key in [*CLASS_DEFAULTS[name], *READ_IF_PRESENT.get(name, ())]
    if key in REFUSED
]


@pytest.mark.parametrize(("name", "key"), REFUSALS, ids=[f"{n}-{k}" for n, k in REFUSALS])
def test_unimplemented_entries_are_refused(name, key):
    with pytest.raises(ValueError, match=f"{key}=.* is not implemented for {name}; minisd supports"):
        make_scheduler(name, {**SD15_JSON, key: UNIMPLEMENTED[key]})


def test_unimplemented_entries_are_refused_by_the_classes_that_read_them_only():
    """As diffusers: DDIM takes no solver_order, Euler no thresholding, PNDM no rescale_betas_zero_snr."""
    assert set(UNIMPLEMENTED) == set(REFUSED)
    for name in SCHEDULERS:
        unread = {k: v for k, v in UNIMPLEMENTED.items() if (name, k) not in REFUSALS}
        assert make_scheduler(name, {**SD15_JSON, **unread}).config == make_scheduler(name, SD15_JSON).config


def test_values_diffusers_maps_to_implemented_ones():
    """DPM-Solver turns DEIS/UniPC's solver types into midpoint, and ignores DDPM's variance kinds."""
    for config in ({"solver_type": "logrho"}, {"solver_type": "bh2"}, {"variance_type": "fixed_large"}):
        mine = make_scheduler("dpmpp_2m", {**SD15_JSON, **config})
        ref = DPMSolverMultistepScheduler.from_config({**SD15_JSON, **config})
        assert trajectory_error("dpmpp_2m", 12, pair=(mine, ref)) <= TOL


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("ddim", {"dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}),
        ("dpmpp_2m", {"flow_shift": 3.0, "time_shift_type": "linear"}),
    ],
)
def test_ignored_entries_change_nothing_in_diffusers(name, entry):
    """Read only under a refused setting (thresholding, flow σ, dynamic shifting): diffusers' result is the same."""
    plain = clamped(REFERENCE[name].from_config(SD15_JSON), name)
    assert trajectory_error(name, 12, pair=(make_scheduler(name, {**SD15_JSON, **entry}), plain)) <= TOL
    odd = clamped(REFERENCE[name].from_config({**SD15_JSON, **entry}), name)
    assert trajectory_error(name, 12, pair=(make_scheduler(name, SD15_JSON), odd)) <= TOL


# --------------------------------------------------------------------------------------------------------------
# Forward noising


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_add_noise_batched_mixed_timesteps(name):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((4, *SHAPE[1:]), generator=g), torch.randn((4, *SHAPE[1:]), generator=g)
    ours, ref = make_scheduler(name), reference(name)
    t = torch.tensor([0, 1, 500, 999])
    if name != "dpmpp_2m":  # before set_timesteps (diffusers' DPM-Solver is off here, see the test below)
        assert max_rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) <= 1e-6
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    if name in SIGMA_BASED:  # σ-samplers look t up in their inference schedule
        t = ref.timesteps[[0, 7, 19, 7]]
    assert max_rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) <= 1e-6


def test_add_noise_is_q_xt_given_x0():
    """Before set_timesteps: √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, or x0 + σ_t·ε for Euler's scale (DPM-Solver: unlike diffusers)."""
    x0, noise = torch.ones(3, 2), torch.full((3, 2), -2.0)
    t = torch.tensor([0, 400, 999])
    for name in SCHEDULERS:
        sched = make_scheduler(name)
        ab = sched.alphas_cumprod[t][:, None]
        if name.startswith("euler"):
            expected = x0 + ((1 - ab) / ab).sqrt() * noise
        else:
            expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        assert max_rel_err(sched.add_noise(x0, noise, t), expected) <= 1e-6
    # diffusers' DPM-Solver stores σ ascending before set_timesteps, so it noises t = 0 as t = 999:
    ref = reference("dpmpp_2m")
    assert ref.add_noise(x0, noise, t)[0, 0] < -1.9


def test_snr_matches_diffusers():
    sched, t = make_scheduler("ddpm"), torch.arange(1000)
    torch.testing.assert_close(sched.snr(t), compute_snr(reference("ddpm"), t), rtol=1e-6, atol=0)
    assert sched.snr(0) > 1000 > 0.01 > sched.snr(999)


# --------------------------------------------------------------------------------------------------------------
# diffusers' quirks, matched or (where it crashes) documented


def test_ddim_previous_timestep_is_t_minus_T_over_n():
    """Matched diffusers quirk: under "linspace" DDIM steps to t − T//n, not to the next listed timestep."""
    sched = sd15_scheduler("ddim", timestep_spacing="linspace")
    sched.set_timesteps(50)
    t = sched.timesteps.tolist()
    assert t[:4] == [999, 979, 958, 938]
    assert sched.previous_timestep(t[1]) == 979 - 1000 // 50 == 959 != t[2]
    assert trajectory_error("ddim", 50, {"timestep_spacing": "linspace"}) <= TOL


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_trailing_extra_timestep(name):
    """Matched diffusers quirk: "trailing" at n = 61 gives 62 timesteps ending at −1."""
    ours, ref = sd15_scheduler(name, timestep_spacing="trailing"), reference(name, timestep_spacing="trailing")
    ours.set_timesteps(61)
    ref.set_timesteps(61)
    assert_same_schedule(ours, ref, name)
    assert int(ours.timesteps[-1]) == -1
    assert trajectory_error(name, 61, {"timestep_spacing": "trailing"}) <= TOL


def test_repeated_first_timestep():
    """DPM-Solver with Karras σ under the cosine schedule truncates its first 9 of 20 timesteps to 998.

    diffusers starts at the second occurrence and overruns its σ table on the last step; minisd starts at
    the first, which is what diffusers does when told to (set_begin_index(0), compared in the trajectories).
    """
    config = {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
    with pytest.raises(IndexError):
        trajectory("dpmpp_2m", reference("dpmpp_2m", **config), 20, 0, begin_at_first=False)
    assert trajectory_error("dpmpp_2m", 20, config) <= TOL


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_thousand_leading_steps(name):
    """No index error at n = T: "leading" + steps_offset reaches t = T, which diffusers' ᾱ samplers can't read."""
    small = (1, 4, 2, 2)
    if name == "dpmpp_2m":
        ref = reference(name)
        ref.set_timesteps(1000)
        assert (ref.timesteps == 1).all()  # diffusers: every timestep collapses to steps_offset
        with pytest.raises(ValueError, match="fewer than 1000 steps"):
            make_scheduler(name).set_timesteps(1000)
        ours, _ = trajectory(name, sd15_scheduler(name, timestep_spacing="trailing"), 1000, 0, small)
        theirs, _ = trajectory(name, reference(name, timestep_spacing="trailing"), 1000, 0, small)
    else:
        if name in ("ddpm", "ddim", "pndm"):
            with pytest.raises(IndexError):
                trajectory(name, reference(name), 1000, 0, small)
        ours, _ = trajectory(name, make_scheduler(name), 1000, 0, small)
        theirs, _ = trajectory(name, clamped_reference(name), 1000, 0, small)
    err = max(max_rel_err(a, b) for sa, sb in zip(ours, theirs, strict=True) for a, b in zip(sa, sb, strict=True))
    assert err <= TOL and all(torch.isfinite(x).all() for x, _ in ours)


# --------------------------------------------------------------------------------------------------------------
# API and state


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_set_timesteps_restarts_state(name):
    sched = sd15_scheduler(name, use_karras_sigmas=True)
    first, _ = trajectory(name, sched, 12, 0)
    again, _ = trajectory(name, sched, 12, 0)  # same object: ets, previous x̂0, step index all reset
    assert all(torch.equal(a, b) for sa, sb in zip(first, again, strict=True) for a, b in zip(sa, sb, strict=True))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_api_surface(name):
    sched = make_scheduler(name)
    assert isinstance(sched.config, SchedulerConfig) and sched.order == 1
    assert sched.alphas_cumprod.dtype == torch.float32 and sched.alphas_cumprod.shape == (1000,)
    sched.set_timesteps(10)
    assert sched.timesteps.dtype == (torch.float32 if name.startswith("euler") else torch.int64)
    x = torch.zeros(SHAPE)
    t = sched.timesteps[0]
    out = sched.step(model(sched.scale_model_input(x, t), t), t, x, generator=torch.Generator())
    assert isinstance(out, StepOutput)
    assert out.prev_sample.shape == out.pred_original_sample.shape == SHAPE


# --------------------------------------------------------------------------------------------------------------
# Clear errors


def test_unknown_scheduler():
    with pytest.raises(ValueError, match=r"unknown scheduler 'heun'.*'ddim'.*'dpmpp_2m'"):
        make_scheduler("heun")


@pytest.mark.parametrize(
    ("name", "entry", "match"),
    [
        ("ddim", {"beta_schedule": "foo"}, "beta_schedule='foo'.*'scaled_linear', 'linear', 'squaredcos_cap_v2'"),
        ("ddim", {"timestep_spacing": "bar"}, "timestep_spacing='bar'.*'leading', 'trailing', 'linspace'"),
        ("ddim", {"prediction_type": "sample"}, "prediction_type='sample'.*'epsilon', 'v_prediction'"),
        ("euler", {"final_sigmas_type": "max"}, "final_sigmas_type='max'.*'zero', 'sigma_min'"),
        ("ddim", {"num_train_timesteps": 0}, "num_train_timesteps=0"),
        ("ddim", {"steps_offset": -1}, "steps_offset=-1"),
        ("ddim", {"beta_start": 0.1, "beta_end": 0.01}, "beta_start=0.1"),
        ("ddim", {"beta_start": "x"}, "beta_start='x'"),
        ("ddim", {"clip_sample": "yes"}, "clip_sample='yes'.*true or false"),
        ("pndm", {"skip_prk_steps": 0}, "skip_prk_steps=0.*true or false"),
        ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type='sde-dpmsolver\\+\\+' is not implemented"),
        ("dpmpp_2m", {"solver_order": 3}, "solver_order=3 is not implemented for dpmpp_2m"),
        ("ddim", {"thresholding": True}, "thresholding=True is not implemented"),
        ("ddim", {"trained_betas": [0.1, 0.2]}, "trained_betas=.* is not implemented"),
        ("ddpm", {"variance_type": "learned_range"}, "variance_type='learned_range'.*'fixed_small'"),
    ],
)
def test_bad_config_values(name, entry, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler(name, entry)


def test_unknown_config_entries_are_ignored():
    """Entries a class does not take are ignored, as diffusers ignores them, even at values refused elsewhere."""
    extra = {"_class_name": "X", "skip_prk_steps": False, "solver_order": 3, "something_new": 3}
    assert make_scheduler("ddim", {**SD15_JSON, **extra}).config == SchedulerConfig()
    # Entries left out take the class's default, here steps_offset 0 (SD's is 1).
    assert make_scheduler("dpmpp_2m", {"algorithm_type": "dpmsolver++", "solver_order": 2}).config.steps_offset == 0


@pytest.mark.parametrize("n", [0, 1001, 2.5, True, "10"])
def test_bad_number_of_steps(n):
    with pytest.raises(ValueError, match="integer from 1 to 1000"):
        make_scheduler("euler").set_timesteps(n)


def test_other_bad_calls():
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="call set_timesteps"):
        make_scheduler("ddim").step(x, 999, x)
    euler = make_scheduler("euler")
    euler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 500 is not one of"):
        euler.step(x, 500, x)
    with pytest.raises(ValueError, match=r"integers in \[0, 1000\)"):
        make_scheduler("ddpm").add_noise(x, x, torch.tensor([3, 1000]))
    with pytest.raises(TypeError, match="config must be a dict"):
        make_scheduler("ddim", "scaled_linear")


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_trajectory_matches_diffusers(name, dtype):
    """Under fp16/bf16 models the σ samplers update in fp32 and cast back (as diffusers); all keep the dtype."""
    ours, ref = make_scheduler(name), reference(name)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma).to(dtype)
    x_ref = x.clone()
    g, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    kw = {"generator": g_ref} if "generator" in inspect.signature(ref.step).parameters else {}
    for t, t_ref in zip(ours.timesteps, ref.timesteps, strict=True):
        out = ours.step(model(ours.scale_model_input(x, t), t).to(dtype), t, x, generator=g)
        out_ref = ref.step(model(ref.scale_model_input(x_ref, t_ref), t_ref).to(dtype), t_ref, x_ref, **kw)
        x, x_ref = out.prev_sample, out_ref.prev_sample
        assert x.dtype == x_ref.dtype == dtype
        assert max_rel_err(x.float(), x_ref.float()) <= (2e-3 if dtype == torch.float16 else 2e-2)
