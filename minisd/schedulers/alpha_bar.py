"""Samplers on the ᾱ scale: DDPM, DDIM, PNDM (PLMS)."""

from __future__ import annotations

import torch

from .schedule import Scheduler, StepOutput, _first_index, _randn_like, _x0_from_output


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
