"""The scheduling algorithm: how noise is added in training, and how each step of sampling removes some.

Forward process (Ho et al. 2020, eq. 4): a clean latent x0 becomes, at training step t ∈ [0, T),

    x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε,    ε ~ N(0, I),    ᾱ_t = Π_{s ≤ t} (1 − β_s).

The same noise level read as a "variance exploding" scale is σ_t = √((1 − ᾱ_t) / ᾱ_t): x_t / √ᾱ_t = x0 + σ_t ε.
DDPM, DDIM and PNDM walk the ᾱ_t chain; Euler, Euler ancestral and DPM-Solver++ walk σ.

Every sampler is a small class with the same API::

    sched = make_scheduler("ddim")                 # SD v1.5's schedule; or a diffusers scheduler_config.json dict
    sched.set_timesteps(50)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        step = sched.step(unet(sched.scale_model_input(x, t), t), t, x, generator=g)
        x, x0 = step.prev_sample, step.pred_original_sample      # x_{t−1} and the current guess of x0

Each is checked step for step against its diffusers counterpart (tests/test_schedulers.py), down to where the
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
* When the first timestep appears twice, diffusers starts at its second occurrence; here at the first. Only
  degenerate schedules repeat it: the DPM case above, and DPM-Solver's Karras σ under squaredcos_cap_v2,
  whose first timesteps all truncate to 998 and where diffusers overruns its σ table on the last step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FINAL_SIGMAS = ("zero", "sigma_min")


@dataclass
class SchedulerConfig:
    """The fields of a diffusers ``scheduler/scheduler_config.json`` that minisd reads. Default: SD v1.5."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"  # SD 2.x 768 uses "v_prediction"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    clip_sample: bool = False  # DDPM, DDIM
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = False  # DDIM, PNDM: ᾱ after the last step is 1, else ᾱ_0
    use_karras_sigmas: bool = False  # Euler, DPM-Solver++
    final_sigmas_type: str = "zero"  # Euler, DPM-Solver++: the σ after the last step, 0 or σ_0
    lower_order_final: bool = True  # DPM-Solver++: first-order last step when n < 15
    euler_at_final: bool = False  # DPM-Solver++: always a first-order last step

    # Entries minisd implements at one setting only: any other value is an error, never silently ignored.
    FIXED: ClassVar[dict[str, tuple]] = {
        "trained_betas": (None,),
        "variance_type": ("fixed_small", None),
        "thresholding": (False,),
        "rescale_betas_zero_snr": (False,),
        "interpolation_type": ("linear",),
        "timestep_type": ("discrete",),
        "algorithm_type": ("dpmsolver++",),
        "solver_type": ("midpoint",),
        "solver_order": (2,),
        "use_exponential_sigmas": (False, None),
        "use_beta_sigmas": (False, None),
        "use_lu_lambdas": (False,),
        "use_flow_sigmas": (False,),
        "sigma_min": (None,),
        "sigma_max": (None,),
        "lambda_min_clipped": (-math.inf,),
    }

    def __post_init__(self):
        def fail(name: str, want: str):
            raise ValueError(f"scheduler config: {name}={getattr(self, name)!r} is invalid; {want}")

        for name, choices in [
            ("beta_schedule", BETA_SCHEDULES),
            ("prediction_type", PREDICTION_TYPES),
            ("timestep_spacing", SPACINGS),
            ("final_sigmas_type", FINAL_SIGMAS),
        ]:
            if getattr(self, name) not in choices:
                fail(name, "use one of " + ", ".join(map(repr, choices)))
        if self.use_karras_sigmas is None:  # diffusers' Euler accepts null for False
            self.use_karras_sigmas = False
        for name in ("clip_sample", "set_alpha_to_one", "use_karras_sigmas", "lower_order_final", "euler_at_final"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "use true or false")
        if not _is_int(self.num_train_timesteps) or self.num_train_timesteps < 2:
            fail("num_train_timesteps", "use an integer ≥ 2")
        if not _is_int(self.steps_offset) or self.steps_offset < 0:
            fail("steps_offset", "use an integer ≥ 0")
        if not (_is_real(self.beta_start) and _is_real(self.beta_end) and 0 < self.beta_start <= self.beta_end < 1):
            fail("beta_start", f"need 0 < beta_start ≤ beta_end < 1 (beta_end={self.beta_end!r})")
        if not (_is_real(self.clip_sample_range) and self.clip_sample_range > 0):
            fail("clip_sample_range", "use a number > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerConfig:
        """Read a diffusers scheduler config: unknown entries are ignored, unsupported settings refused."""
        for key, accepted in cls.FIXED.items():
            if key in data and not any(_same(data[key], a) for a in accepted):
                raise ValueError(
                    f"scheduler config: {key}={data[key]!r} is not implemented; minisd supports "
                    + " or ".join(map(repr, accepted))
                )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _same(value: Any, accepted: Any) -> bool:
    if accepted is None or isinstance(accepted, bool):
        return value is accepted
    return type(value) is not bool and value == accepted


@dataclass
class StepOutput:
    """One sampling step: the next, less noisy sample x_{t−1} and the current guess of the clean x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


# --------------------------------------------------------------------------------------------------------------
# The noise schedule, shared by all samplers


def make_betas(config: SchedulerConfig) -> torch.Tensor:
    """β_t for t = 0 … T−1, float32.

    The linear schedules use float32 ``torch.linspace`` exactly as SD's schedulers do: Karras timesteps are
    rounded from a log-σ interpolation, and a float64 schedule (1e-6 away) flips a few of them. The cosine
    schedule (Nichol & Dhariwal 2021, eq. 17) is a ratio of ᾱ's close to 1 at small t, so it is computed in
    float64 and then cast, lest its small-t betas (≈ 4e-5) lose their digits.
    """
    T = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float32)
    if config.beta_schedule == "scaled_linear":  # linear in √β: the schedule latent diffusion was trained with
        return torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float32) ** 2
    s = np.arange(T + 1, dtype=np.float64) / T
    alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.from_numpy(np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(np.float32))


def spaced_timesteps(config: SchedulerConfig, n: int) -> np.ndarray:
    """n timesteps, descending, float64: Lin et al. 2024 ("Common Diffusion Noise Schedules...", Table 2).

    "leading" (SD): 0, T//n, 2T//n … counted up from 0 and shifted by steps_offset; "trailing": counted
    down from T − 1; "linspace": evenly from T − 1 to 0, not yet rounded.
    """
    T = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        return (np.arange(n) * (T // n)).round()[::-1] + config.steps_offset
    if config.timestep_spacing == "trailing":
        # The float step makes np.arange return n + 1 values (the last −1) for some n; diffusers does the same.
        return np.round(np.arange(T, 0, -T / n)) - 1
    return np.linspace(0, T - 1, n)[::-1]


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    """n noise levels from σ_max down to σ_min, dense near σ_min: Karras et al. 2022, eq. 5."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each σ, interpolating linearly in log σ (clamped to [0, T−1])."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    low = np.clip(np.searchsorted(log_train_sigmas, log_sigma, side="right") - 1, 0, len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of x's shape and dtype, drawn on the generator's device then moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, …) to broadcast one value per sample against x."""
    return values.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _x0_from_output(output: torch.Tensor, x: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """x̂0 from the network output when x = α·x0 + σ·ε (α² + σ² = 1)."""
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    return alpha * x - sigma * output  # v = α·ε − σ·x0 (Salimans & Ho 2022, §4)


class Scheduler:
    """The schedule every sampler shares: β → α → ᾱ → σ, SNR, q(x_t | x0), and the inference timesteps."""

    name: ClassVar[str]
    order: ClassVar[int] = 1  # model evaluations per timestep, as diffusers' pipelines read it
    init_noise_sigma: float = 1.0  # x_T ~ N(0, 1) for the samplers that work on the ᾱ scale

    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config if config is not None else SchedulerConfig()
        T = self.config.num_train_timesteps
        self.betas = make_betas(self.config)  # (T,) float32
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t, (T,) float32
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(T - 1, -1, -1)  # the full training chain until set_timesteps
        self._reset()

    @property
    def train_sigmas(self) -> torch.Tensor:
        """σ_t = √((1 − ᾱ_t)/ᾱ_t) for t = 0 … T−1, float32 (computed as diffusers does, in float32)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at training timesteps t (computed in float64)."""
        alpha_bar = self.alphas_cumprod[self._train_index(t)].double()
        return (alpha_bar / (1 - alpha_bar)).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x0): x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, one t per sample. x0, noise: (B, …); t: int or (B,)."""
        alpha_bar = _per_sample(self.alphas_cumprod[self._train_index(t)], x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def set_timesteps(self, n: int) -> None:
        """Choose n inference timesteps (``config.timestep_spacing``) and restart any multistep state."""
        T = self.config.num_train_timesteps
        if not _is_int(n) or not 1 <= n <= T:
            raise ValueError(f"number of inference steps must be an integer from 1 to {T}, got {n!r}")
        self.num_inference_steps = int(n)
        self._set_schedule(int(n))
        self._reset()

    def scale_model_input(self, x: torch.Tensor, t) -> torch.Tensor:
        """What the UNet should see at t: x itself on the ᾱ scale."""
        return x

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor, generator=None) -> StepOutput:
        """One reverse step from x at timestep t (an entry of ``timesteps``): x_{t−1} and x̂0."""
        raise NotImplementedError

    def _set_schedule(self, n: int) -> None:
        self.timesteps = self._make_timesteps(n)

    def _make_timesteps(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.round(spaced_timesteps(self.config, n)).astype(np.int64))

    def _reset(self) -> None:
        """Forget multistep state; called by set_timesteps."""

    def _train_index(self, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.min() < 0 or t.max() >= self.config.num_train_timesteps:
            raise ValueError(f"timesteps must be integers in [0, {self.config.num_train_timesteps}), got {t}")
        return t.reshape(-1)

    def _alpha_bar(self, t: int) -> torch.Tensor:
        """ᾱ_t with t clamped to [0, T−1]: "leading" at n = T reaches T, "trailing" sometimes −1 (see top)."""
        return self.alphas_cumprod[min(max(int(t), 0), self.config.num_train_timesteps - 1)]

    def _require_timesteps(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError(f"{self.name}: call set_timesteps(n) before step()")
        return self.num_inference_steps


# --------------------------------------------------------------------------------------------------------------
# Samplers on the ᾱ scale


class DDPM(Scheduler):
    """Ancestral sampling of the reverse Markov chain (Ho et al. 2020), strided to the chosen timesteps."""

    name = "ddpm"

    def previous_timestep(self, t) -> int:
        """The next entry of ``timesteps`` after t, or −1 after the last."""
        i = _first_index(self.timesteps, t)
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        t, prev_t = int(t), self.previous_timestep(t)
        alpha_bar = self._alpha_bar(t)
        alpha_bar_prev = self._alpha_bar(prev_t) if prev_t >= 0 else torch.tensor(1.0)
        alpha = alpha_bar / alpha_bar_prev  # α_t of the strided chain
        beta = 1 - alpha

        x0 = _x0_from_output(model_output, x, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), self.config.prediction_type)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

        # Ho et al. 2020, eq. 7: the posterior mean μ̃_t(x_t, x0) ...
        prev = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 + (
            alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
        ) * x
        if t > 0:  # ... plus noise of the "fixed_small" variance β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t (§3.2)
            variance = ((1 - alpha_bar_prev) / (1 - alpha_bar) * beta).clamp(min=1e-20)
            prev = prev + variance.sqrt() * _randn_like(model_output, generator)
        return StepOutput(prev, x0)


class DDIM(Scheduler):
    """Denoising diffusion implicit models (Song et al. 2021): deterministic at eta = 0, DDPM-like at eta = 1."""

    name = "ddim"

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ "after" the last step: 1 with set_alpha_to_one, else ᾱ_0 (SD)."""
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def previous_timestep(self, t) -> int:
        """t − T // n, as diffusers: under "linspace" (or "trailing" when n ∤ T) not the next listed timestep."""
        return int(t) - self.config.num_train_timesteps // self._require_timesteps()

    def step(self, model_output, t, x, generator=None, eta: float = 0.0) -> StepOutput:
        prev_t = self.previous_timestep(t)
        alpha_bar = self._alpha_bar(t)
        alpha_bar_prev = self._alpha_bar(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

        x0 = _x0_from_output(model_output, x, a, s, self.config.prediction_type)
        eps = model_output if self.config.prediction_type == "epsilon" else a * model_output + s * x
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

        # Song et al. 2021, eq. 16: σ_t(η) = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1})
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
        # eq. 12: x_{t−1} = √ᾱ_{t−1}·x̂0 + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·z
        prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        if eta > 0:
            prev = prev + sigma * _randn_like(model_output, generator)
        return StepOutput(prev, x0)


class PNDM(Scheduler):
    """PLMS, the pseudo linear multistep method of Liu et al. 2022, as SD runs it (diffusers' skip_prk_steps).

    The first step is an improved-Euler (Heun) step, which needs the model at the first timestep and twice at
    the second: ``timesteps`` lists the second one twice (981, 961, 961, 941 … for 50 steps).
    """

    name = "pndm"

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def _make_timesteps(self, n: int) -> torch.Tensor:
        t = super()._make_timesteps(n)
        return torch.cat([t[:1], t[1:2], t[1:]])

    def _reset(self) -> None:
        self._eps: list[torch.Tensor] = []  # the model outputs of the last 4 timesteps
        self._first_sample: torch.Tensor | None = None
        self._counter = 0

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        t = int(t)
        alpha_bar = self._alpha_bar(t)
        x0 = _x0_from_output(model_output, x, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), self.config.prediction_type)

        delta = self.config.num_train_timesteps // self._require_timesteps()  # t − δ: as DDIM, see top
        prev_t = t - delta
        e = self._eps
        if self._counter == 1:
            # The Heun correction of the first step: redo x_T → x_{T−δ} with the mean of the two slopes.
            eps, x, t, prev_t = (model_output + e[-1]) / 2, self._first_sample, t + delta, t
        else:
            # Liu et al. 2022, eq. 12: Adams–Bashforth on ε, of the highest order the history allows (≤ 4).
            e.append(model_output)
            del e[:-4]
            if len(e) == 1:
                eps, self._first_sample = e[-1], x
            elif len(e) == 2:
                eps = (3 * e[-1] - e[-2]) / 2
            elif len(e) == 3:
                eps = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
            else:
                eps = (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4]) / 24
        self._counter += 1
        return StepOutput(self._transfer(x, t, prev_t, eps), x0)

    def _transfer(self, x: torch.Tensor, t: int, prev_t: int, output: torch.Tensor) -> torch.Tensor:
        """Liu et al. 2022, eq. 9: the transfer φ(x_t, ε, t, t − δ), i.e. a DDIM step (eta = 0)."""
        alpha_bar = self._alpha_bar(t)
        alpha_bar_prev = self._alpha_bar(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":  # the combined output read as v at (x, t)
            output = alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x
        denominator = alpha_bar * (1 - alpha_bar_prev).sqrt() + (alpha_bar * (1 - alpha_bar) * alpha_bar_prev).sqrt()
        return (alpha_bar_prev / alpha_bar).sqrt() * x - (alpha_bar_prev - alpha_bar) * output / denominator


# --------------------------------------------------------------------------------------------------------------
# Samplers on the σ scale


class SigmaScheduler(Scheduler):
    """Samplers that step through noise levels σ: ``sigmas`` holds one per timestep plus the final one."""

    def __init__(self, config: SchedulerConfig | None = None):
        super().__init__(config)
        self.sigmas = torch.cat([self.train_sigmas.flip(0), torch.zeros(1)])  # the training chain, T−1 … 0

    def _set_schedule(self, n: int) -> None:
        self.timesteps, self.sigmas = self._make_schedule(n)

    def _make_schedule(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The n timesteps and their n + 1 noise levels σ (the last one after the final step)."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x0) at the σ that ``sigmas`` gives each t of ``timesteps``; x0, noise: (B, …)."""
        t = torch.as_tensor(t).reshape(-1)
        sigma = _per_sample(self.sigmas[[_first_index(self.timesteps, ti) for ti in t]], x0)
        return self._noised(x0, noise, sigma)

    def _noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reset(self) -> None:
        self._step_index: int | None = None

    def _index(self, t) -> int:
        """The position in ``timesteps`` of the current step: found from t at the first call, then counted."""
        if self._step_index is None:
            self._step_index = _first_index(self.timesteps, t)
        return self._step_index

    def _interpolated_sigmas(self, timesteps: np.ndarray) -> np.ndarray:
        """σ at (fractional) timesteps, linear in t between training steps and clamped at both ends."""
        return np.interp(timesteps, np.arange(self.config.num_train_timesteps), self.train_sigmas.numpy())

    def _final_sigma(self) -> float:
        return float(self.train_sigmas[0]) if self.config.final_sigmas_type == "sigma_min" else 0.0


class Euler(SigmaScheduler):
    """Euler's method on the probability-flow ODE dx/dσ = (x − x̂0)/σ, on x = x0 + σ·ε (Karras et al. 2022)."""

    name = "euler"
    karras: ClassVar[bool] = True  # honours config.use_karras_sigmas

    @property
    def init_noise_sigma(self) -> float:
        """x_T's scale: σ_max, or √(σ_max² + 1) under "leading" spacing (as diffusers)."""
        sigma_max = self.sigmas.max()
        if self.config.timestep_spacing == "leading":
            return float((sigma_max**2 + 1) ** 0.5)
        return float(sigma_max)

    def _make_schedule(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = spaced_timesteps(self.config, n).astype(np.float32)  # fractional under "linspace"
        sigmas = self._interpolated_sigmas(timesteps)
        if self.karras and self.config.use_karras_sigmas:
            sigmas = karras_sigmas(float(sigmas[0]), float(sigmas[-1]), n)
            timesteps = sigma_to_t(sigmas, np.log(self.train_sigmas.numpy())).astype(np.float32)
        sigmas = np.append(sigmas, self._final_sigma()).astype(np.float32)
        return torch.from_numpy(timesteps), torch.from_numpy(sigmas)

    def scale_model_input(self, x: torch.Tensor, t) -> torch.Tensor:
        """x / √(σ² + 1): the UNet was trained on the ᾱ scale, x_t·√ᾱ_t."""
        sigma = self.sigmas[self._index(t)]
        return x / (sigma**2 + 1) ** 0.5

    def _noised(self, x0, noise, sigma):
        return x0 + sigma * noise

    def _x0(self, model_output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return x - sigma * model_output
        # v on the ᾱ scale, x/√(σ²+1) = α·x0 + σα·ε with α = 1/√(σ²+1), brought back to x0
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = x.float()  # the update in fp32 under fp16/bf16 models (as diffusers), the result cast back
        x0 = self._x0(model_output, x, sigma)
        # Karras et al. 2022, Alg. 1 lines 4–5 without Heun's correction: d = (x − x̂0)/σ, x' = x + (σ' − σ)·d
        d = (x - x0) / sigma
        self._step_index = i + 1
        return StepOutput((x + d * (sigma_next - sigma)).to(model_output.dtype), x0)


class EulerAncestral(Euler):
    """Euler down to σ_down, then fresh noise of σ_up: the ancestral sampler of k-diffusion (Crowson)."""

    name = "euler_ancestral"
    karras: ClassVar[bool] = False  # diffusers' EulerAncestralDiscreteScheduler has no Karras option

    def _final_sigma(self) -> float:
        return 0.0

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = x.float()  # the update in fp32 under fp16/bf16 models (as diffusers), the result cast back
        x0 = self._x0(model_output, x, sigma)
        # Split σ_next² = σ_down² + σ_up² so the added noise has DDPM's posterior variance (Ho et al. 2020 eq. 7,
        # in σ form): σ_up = √(σ_next²(σ² − σ_next²)/σ²).
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        d = (x - x0) / sigma
        prev = x + d * (sigma_down - sigma) + _randn_like(model_output, generator) * sigma_up
        self._step_index = i + 1
        return StepOutput(prev.to(model_output.dtype), x0)


class DPMSolverPP2M(SigmaScheduler):
    """DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver on x̂0, in log-SNR time λ.

    It runs on the ᾱ scale, x = α·x0 + σ_α·ε with α = 1/√(σ² + 1), σ_α = σ·α, λ = log(α/σ_α).
    """

    name = "dpmpp_2m"

    def set_timesteps(self, n: int) -> None:
        T, spacing = self.config.num_train_timesteps, self.config.timestep_spacing
        if spacing == "leading" and _is_int(n) and T // (n + 1) == 0:
            raise ValueError(
                f"dpmpp_2m with 'leading' spacing needs fewer than {T} steps (got {n}): it spaces n + 1 points "
                "by T // (n + 1), which is 0 here; use 'trailing' or 'linspace' spacing for that many steps"
            )
        super().set_timesteps(n)

    def _make_schedule(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if cfg.timestep_spacing == "trailing":
            timesteps = np.round(spaced_timesteps(cfg, n))
        else:  # n + 1 points, the last (t = 0 side) dropped
            timesteps = np.round(spaced_timesteps(cfg, n + 1))[:-1]
        train_sigmas = self.train_sigmas.numpy()
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(float(train_sigmas[-1]), float(train_sigmas[0]), n)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
            if cfg.beta_schedule != "squaredcos_cap_v2":  # diffusers truncates under the cosine (see top)
                timesteps = timesteps.round()
        else:
            sigmas = self._interpolated_sigmas(timesteps)
        sigmas = np.append(sigmas, self._final_sigma()).astype(np.float32)
        return torch.from_numpy(timesteps.astype(np.int64)), torch.from_numpy(sigmas)

    def _reset(self) -> None:
        super()._reset()
        self._prev_x0: torch.Tensor | None = None

    def _noised(self, x0, noise, sigma):
        alpha, sigma_alpha = _alpha_sigma(sigma)
        return alpha * x0 + sigma_alpha * noise

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        self._require_timesteps()
        n = len(self.timesteps)  # n + 1 for some n under "trailing" (see top)
        i = self._index(t)
        alpha_s, sigma_s = _alpha_sigma(self.sigmas[i])
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
        x0 = _x0_from_output(model_output, x, alpha_s, sigma_s, self.config.prediction_type)
        x = x.float()  # the update in fp32 under fp16/bf16 models (as diffusers), the result cast back
        h = _lambda(alpha_t, sigma_t) - _lambda(alpha_s, sigma_s)

        cfg = self.config
        last = i == len(self.timesteps) - 1
        first_order = self._prev_x0 is None or (
            last and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        )
        if first_order:  # DPM-Solver++(1), which is DDIM
            D = x0
        else:  # Lu et al. 2022, Alg. 2: D = (1 + 1/2r)·x̂0_i − (1/2r)·x̂0_{i−1}, r = h_{i−1}/h_i
            alpha_p, sigma_p = _alpha_sigma(self.sigmas[i - 1])
            r = (_lambda(alpha_s, sigma_s) - _lambda(alpha_p, sigma_p)) / h
            D = x0 + 0.5 * (x0 - self._prev_x0) / r
        # x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D
        prev = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * D
        self._prev_x0, self._step_index = x0, i + 1
        return StepOutput(prev.to(model_output.dtype), x0)


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """σ on the x0 + σε scale → (α, σ_α) on the ᾱ scale."""
    alpha = 1 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


def _lambda(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Half the log-SNR, λ = log α − log σ (+∞ at σ = 0)."""
    return torch.log(alpha) - torch.log(sigma)


def _first_index(timesteps: torch.Tensor, t) -> int:
    hits = (timesteps == torch.as_tensor(t)).nonzero()
    if len(hits) == 0:
        raise ValueError(
            f"timestep {t!r} is not one of this scheduler's {len(timesteps)} timesteps "
            f"({timesteps[0].item()} … {timesteps[-1].item()}); pass an entry of .timesteps"
        )
    return int(hits[0])


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (DDPM, DDIM, PNDM, Euler, EulerAncestral, DPMSolverPP2M)
}


def make_scheduler(name: str, config: Mapping[str, Any] | SchedulerConfig | None = None) -> Scheduler:
    """A sampler by name, with SD v1.5's schedule or a diffusers ``scheduler_config.json`` dict."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of " + ", ".join(map(repr, SCHEDULERS)))
    if isinstance(config, Mapping):
        config = SchedulerConfig.from_dict(config)
    elif config is not None and not isinstance(config, SchedulerConfig):
        raise TypeError(f"config must be a dict or a SchedulerConfig, got {type(config).__name__}")
    return SCHEDULERS[name](config)
