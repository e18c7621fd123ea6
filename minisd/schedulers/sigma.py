"""Samplers on the σ scale: Euler, Euler ancestral, DPM-Solver++(2M)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .schedule import (
    Scheduler,
    SchedulerConfig,
    StepOutput,
    _first_index,
    _is_int,
    _per_sample,
    _randn_like,
    _x0_from_output,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
)


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
        """x̂0 from the UNet's output, which it computed on the ᾱ scale: x·α = α·x0 + σα·ε, α = 1/√(σ² + 1)."""
        alpha, sigma_alpha = _alpha_sigma(sigma)
        return _x0_from_output(model_output, x * alpha, alpha, sigma_alpha, self.config.prediction_type)

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
        # Lu et al. 2022, eq. 5 (the DPM-Solver++ update in log-SNR time, h = λ_t − λ_s):
        #   x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D
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
