"""The noise schedule every sampler shares: β → α → ᾱ → σ, the inference timesteps, and the base class."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import JsonConfig

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FINAL_SIGMAS = ("zero", "sigma_min")


@dataclass
class SchedulerConfig(JsonConfig):
    """The settings minisd's samplers read, complete. Default: SD v1.5's (PNDMScheduler as PLMS, "leading").

    ``make_scheduler(name, diffusers_config)`` builds one as diffusers' ``from_config`` would (see
    ``from_diffusers.read_config``) and keeps in ``given`` the entries it was built from, so that another
    sampler made from this config takes its own defaults for the rest, as in diffusers.
    """

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
    skip_prk_steps: bool = True  # PNDM: PLMS from the start (SD), else three Runge–Kutta steps first
    use_karras_sigmas: bool | None = False  # Euler, DPM-Solver++ (diffusers' Euler takes null for false)
    final_sigmas_type: str = "zero"  # Euler, DPM-Solver++: the σ after the last step, 0 or σ_0
    lower_order_final: bool = True  # DPM-Solver++: first-order last step when n < 15
    euler_at_final: bool = False  # DPM-Solver++: always a first-order last step
    # The diffusers entries this config was read from, less those left at their default; None: written here.
    given: dict[str, Any] | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    ERROR: ClassVar[type[Exception]] = ValueError
    # Entries read only under a setting minisd refuses (see from_diffusers.REFUSED): they change nothing here.
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {"dynamic_thresholding_ratio", "sample_max_value", "flow_shift", "time_shift_type"}
    )

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
        for name in (
            "clip_sample",
            "set_alpha_to_one",
            "skip_prk_steps",
            "use_karras_sigmas",
            "lower_order_final",
            "euler_at_final",
        ):
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


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


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


def _first_index(timesteps: torch.Tensor, t) -> int:
    hits = (timesteps == torch.as_tensor(t)).nonzero()
    if len(hits) == 0:
        raise ValueError(
            f"timestep {t!r} is not one of this scheduler's {len(timesteps)} timesteps "
            f"({timesteps[0].item()} … {timesteps[-1].item()}); pass an entry of .timesteps"
        )
    return int(hits[0])


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
