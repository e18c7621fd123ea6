"""Samplers on the ᾱ scale: DDPM, DDIM, PNDM (PLMS, and F-PNDM's Runge–Kutta warm-up)."""

from __future__ import annotations

import itertools

import torch

from .schedule import Scheduler, StepOutput, _first_index, _is_int, _randn_like, _x0_from_output


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
    eta: float = 0.0  # η of eq. 16, this sampler's own setting: 0 deterministic, 1 DDPM-like (step(eta=) overrides)

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ "after" the last step: 1 with set_alpha_to_one, else ᾱ_0 (SD)."""
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def previous_timestep(self, t) -> int:
        """t − T // n, as diffusers: under "linspace" (or "trailing" when n ∤ T) not the next listed timestep."""
        return int(t) - self.config.num_train_timesteps // self._require_timesteps()

    def step(self, model_output, t, x, generator=None, eta: float | None = None) -> StepOutput:
        eta = self.eta if eta is None else eta
        prev_t = self.previous_timestep(t)
        alpha_bar = self._alpha_bar(t)
        alpha_bar_prev = self._alpha_bar(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

        x0 = _x0_from_output(model_output, x, a, s, self.config.prediction_type)
        # v → ε: from v = √ᾱ·ε − √(1−ᾱ)·x0 and x = √ᾱ·x0 + √(1−ᾱ)·ε, ε = √ᾱ·v + √(1−ᾱ)·x
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
    """Pseudo numerical methods (Liu et al. 2022): PLMS, after three Runge–Kutta steps unless skip_prk_steps.

    SD runs PLMS from the start (skip_prk_steps): its first step is an improved-Euler (Heun) step, which needs
    the model at the first timestep and twice at the second, so ``timesteps`` lists the second one twice
    (981, 961, 961, 941 … for 50 steps). Otherwise (F-PNDM) three pseudo Runge–Kutta steps lead: four model
    calls each, at t, twice at t − δ/2 and at t − δ, for the first four timesteps (12 entries of ``timesteps``),
    and PLMS goes on from the fourth with their slopes as its history.
    """

    name = "pndm"

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, n: int) -> None:
        if not self.config.skip_prk_steps and _is_int(n) and n < 4:
            raise ValueError(
                f"pndm with Runge-Kutta steps (skip_prk_steps false) needs at least 4 steps, got {n}; "
                "use skip_prk_steps true (PLMS, as SD) for fewer"
            )
        super().set_timesteps(n)

    def _make_timesteps(self, n: int) -> torch.Tensor:
        t = super()._make_timesteps(n)
        if self.config.skip_prk_steps:
            return torch.cat([t[:1], t[1:2], t[1:]])
        half = self.config.num_train_timesteps // n // 2  # δ/2, as diffusers: from T // n, whatever the spacing
        runge_kutta = [torch.stack([a, b + half, b + half, b]) for a, b in itertools.pairwise(t[:4])]
        return torch.cat([*runge_kutta, t[3:]])

    def _reset(self) -> None:
        self._eps: list[torch.Tensor] = []  # the model outputs of the last 4 timesteps
        self._first_sample: torch.Tensor | None = None
        self._start: tuple[int, torch.Tensor] | None = None  # the current Runge–Kutta step's t and x_t
        self._stages: list[torch.Tensor] = []  # and its slopes so far
        self._counter = 0

    def step(self, model_output, t, x, generator=None) -> StepOutput:
        t = int(t)
        alpha_bar = self._alpha_bar(t)
        x0 = _x0_from_output(model_output, x, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), self.config.prediction_type)

        delta = self.config.num_train_timesteps // self._require_timesteps()  # t − δ: as DDIM, see top
        if not self.config.skip_prk_steps and self._counter < 12:
            prev = self._runge_kutta(model_output, t, x, delta // 2)
        else:
            prev = self._plms(model_output, t, x, delta)
        self._counter += 1
        return StepOutput(prev, x0)

    def _runge_kutta(self, model_output: torch.Tensor, t: int, x: torch.Tensor, half: int) -> torch.Tensor:
        """One of a Runge–Kutta step's four model calls; the fourth completes the step x_t → x_{t−δ}.

        Liu et al. 2022, eq. 13, with the transfer φ of eq. 9:
            e1 = ε(x_t, t),             x1 = φ(x_t, e1, t, t − δ/2)
            e2 = ε(x1, t − δ/2),        x2 = φ(x_t, e2, t, t − δ/2)
            e3 = ε(x2, t − δ/2),        x3 = φ(x_t, e3, t, t − δ)
            e4 = ε(x3, t − δ),          x_{t−δ} = φ(x_t, e', t, t − δ),  e' = (e1 + 2·e2 + 2·e3 + e4)/6
        The transfer targets are taken as diffusers takes them: t − δ/2 after the 1st and 3rd calls (from the
        timestep given), the timestep given after the 2nd and 4th.
        """
        stage = self._counter % 4
        if self._counter == 0 and t != int(self.timesteps[0]):
            raise ValueError(
                f"pndm's Runge-Kutta steps start at the first timestep ({int(self.timesteps[0])}), not at {t}; "
                "for image-to-image use skip_prk_steps true (PLMS, as SD), as diffusers' reads wrong timesteps here"
            )
        if stage == 0:
            self._start, self._stages = (t, x), []
            self._eps.append(model_output)  # e1 of each step: PLMS's history
        self._stages.append(model_output)
        eps = model_output
        if stage == 3:
            e1, e2, e3, e4 = self._stages
            eps = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        target = t - half if stage % 2 == 0 else t
        start_t, start_x = self._start
        return self._transfer(start_x, start_t, target, eps)

    def _plms(self, model_output: torch.Tensor, t: int, x: torch.Tensor, delta: int) -> torch.Tensor:
        """A linear multistep step x_t → x_{t−δ} (with SD's improved-Euler start when it has no history)."""
        e = self._eps
        prev_t = t - delta
        if self._counter == 1 and self.config.skip_prk_steps:
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
        return self._transfer(x, t, prev_t, eps)

    def _transfer(self, x: torch.Tensor, t: int, prev_t: int, output: torch.Tensor) -> torch.Tensor:
        """Liu et al. 2022, eq. 9: the transfer φ(x_t, ε, t, t − δ), i.e. a DDIM step (eta = 0)."""
        alpha_bar = self._alpha_bar(t)
        alpha_bar_prev = self._alpha_bar(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":  # v → ε: ε = √ᾱ·v + √(1−ᾱ)·x
            output = alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x
        # eq. 9, with ᾱ = ᾱ_t and ᾱ' = ᾱ_{t−δ}:
        #   φ = √(ᾱ'/ᾱ)·x_t − (ᾱ' − ᾱ)·ε / (ᾱ·√(1 − ᾱ') + √(ᾱ·(1 − ᾱ)·ᾱ'))
        denominator = alpha_bar * (1 - alpha_bar_prev).sqrt() + (alpha_bar * (1 - alpha_bar) * alpha_bar_prev).sqrt()
        return (alpha_bar_prev / alpha_bar).sqrt() * x - (alpha_bar_prev - alpha_bar) * output / denominator
