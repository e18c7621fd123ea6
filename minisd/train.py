"""Train a small Stable Diffusion from scratch on the shapes world: minisd-tiny.

The recipe of Rombach et al. 2022, at a size one 2-core CPU trains in one run (model card: 98 minutes on an AMD EPYC):

1. **The VAE** learns to compress a 64×64 picture to a 4×16×16 latent and back: reconstruction loss (counted
   5× at the shapes' outlines, ``VAELoss``) plus a small KL term that keeps q(z|x) close to N(0, I), so that
   the latent space has no holes. q(z|x) starts nearly deterministic (``VAE_INIT_LOGVAR``), so that the
   decoder does not first learn to blur noise.
2. **The scaling factor**: the latents' standard deviation, measured on the data, so that the UNet sees
   latents of unit variance (SD measured 0.18215 the same way).
3. **The text encoder and the UNet**, together, on the frozen VAE's scaled latents (a pool of pictures
   encoded once, ``LatentPool``), with the ε objective
   (Ho et al. 2020, eq. 14)::

       L = w(t)·‖ε − ε_θ(√ᾱ_t·z0 + √(1 − ᾱ_t)·ε, t, text)‖²,    t ~ p(t),  ε ~ N(0, I)

   10% of captions are dropped to "" so that one network also learns the unconditional ε that classifier-free
   guidance needs, and an exponential moving average of the weights is what ships.
4. **The decoder again, alone.** The UNet's latents are never exactly the encoder's, and a decoder that has
   only seen the encoder's outputs turns near misses into rounded squares and blunt triangles. With the
   encoder frozen (so the latent space the UNet learned stays as it is), the decoder is fine-tuned on
   z ~ q(z|x) plus noise of ``decoder_noise`` × the latents' spread (``DecoderLoss``). Stability AI fine-tuned
   SD's decoder alone in the same way (sd-vae-ft-mse, on other data and without added noise), so that every
   UNet trained on the old encoder's latents still works with it.

**p(t), the lesson of SD's last timestep.** SD's noise schedule ends at ᾱ_999 ≈ 0.0047, so x_999 still holds
√ᾱ ≈ 0.07 of the clean latent. A layout (a blob on the left) is a low-frequency signal: averaged over a region
the noise cancels and the picture does not, so x_999 still tells where the shapes are (notebooks 3 and 8
measure it). A model trained with t uniform learns to read the layout from x_t at high noise, and at sampling
time, when x_T is pure noise, it reads the layout from the noise instead of the text: the shapes land
anywhere. Drawing half of each batch's timesteps from the high-noise end (``HIGH_NOISE_FROM`` … 999) gives the
network much of its practice where the text is the best guide to the layout.

**w(t), the same lesson for the loss.** Drawing more high-noise timesteps is not enough by itself: there
ε ≈ z_t, so the ε error is small (0.003 at t = 999 against 0.15 at t = 50, measured on an earlier minisd-tiny),
and the timesteps below 700 still make 83% of its loss with the sampling alone (90% of the shipped model's). Yet a
small ε error at high noise is a large error in the picture: the predicted z0 is off by
√((1 − ᾱ_t)/ᾱ_t)·(ε error), 14× at t = 999. Each sample's loss is weighted by w(t) = 1 − ᾱ_t = 1/(1 + SNR(t))
(the P2 weighting of Choi et al. 2022 with k = γ = 1), which keeps the low-noise timesteps from drowning the
ones where colour, shape and layout are decided: t ≥ 700 then makes 65% of the loss (notebook 8 measures it).
See weights/minisd-tiny/README.md.

Run ``minisd train --out DIR`` (``--quick`` for a smoke test of a few steps). Interrupted training resumes
from ``DIR/train_state.pt`` with ``--resume``. With ``torchrun --nproc_per_node N -m minisd train ...`` it
runs data-parallel (DistributedDataParallel; gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import shapes
from .attention import manual_attention
from .checkpoints import DIFFUSERS_VERSION, save_component
from .clip import CLIPTextConfig, CLIPTextModel
from .config import GenerationDefaults
from .schedulers import make_scheduler
from .tokenizer import load_tokenizer
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, DiagonalGaussian, VAEConfig

# The shipped model's networks: SD1.x's structure at a fraction of its width.
TEXT = CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
UNET = UNetConfig(
    sample_size=16,
    block_out_channels=[64, 128, 128],
    # Attention at 8×8, 4×4 and the middle, none at 16×16, as SDXL has none at its largest level. SD1.x's placement
    # (16×16, 8×8, middle) made a training step 1.3× slower on a 2-core CPU; at equal cost, 3,200 steps of this
    # network drew more shapes and pairs than 2,400 of that one (model card, Lesson 6).
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    cross_attention_dim=128,
    attention_head_dim=2,  # heads per level (diffusers' misnomer, see unet.py): 64 channels each
    norm_num_groups=32,
)
VAE = VAEConfig(
    block_out_channels=[32, 64, 128],
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=64,
)
# q(z|x)'s log-variance at the start of training (the quant_conv bias of its log σ² channels): see Trainer.
VAE_INIT_LOGVAR = -6.0
HIGH_NOISE_FROM = 700  # half of the UNet's timesteps are drawn from [700, 1000), see the module docstring
# The sampler and the guidance scale the model ships with; chosen by measurement (see the model card).
SHIPPED_SCHEDULER = {"_class_name": "PNDMScheduler", "skip_prk_steps": True, "timestep_spacing": "leading"}
SHIPPED_GUIDANCE = 2.0


@dataclass
class Settings:
    out: Path
    seed: int = 0
    vae_steps: int = 1500
    unet_steps: int = 4400
    vae_batch: int = 32
    batch: int = 64
    decoder_steps: int = 600
    vae_lr: float = 1e-3
    lr: float = 1e-3
    decoder_lr: float = 3e-4
    decoder_noise: float = 0.3  # the decoder phase's latent noise, in units of the latents' spread (1/scaling)
    kl_weight: float = 1e-6  # on the KL summed over the latent, per pixel value: SD's weight for a summed loss
    vae_edge_weight: float = 4.0  # squared error × (1 + this) at the outlines (VAELoss; model card, Lesson 5)
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    pool: int = 32768  # pictures encoded once for the UNet phase (per process), see LatentPool
    pool_pairs: float = 0.5  # the pool's share of two-shape pictures (the world's: shapes.PAIR_SHARE; card, Lesson 7)
    save_every: int = 250

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> Settings:
        """A few steps at a small batch: the whole pipeline of training runs, in seconds."""
        return cls(out, seed, vae_steps=3, unet_steps=4, decoder_steps=2, vae_batch=4, batch=4, pool=8, save_every=2)


# ---------------------------------------------------------------------------------------------------------
# One process of several (torchrun), or alone


def world() -> tuple[int, int]:
    """(rank, world size); starts the process group when torchrun launched this process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def pick_device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 matrix products: the CPU's matrix units and every recent GPU run them several times faster."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# The losses


def edges(x: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """(B, 1, H, W) True where a pixel differs from the mean of its 3×3 neighbourhood by more than ``threshold``
    in any channel (pictures in [−1, 1]): the outlines of the shapes, and nothing of the flat background."""
    return (x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().amax(1, keepdim=True) > threshold


class VAELoss(nn.Module):
    """Squared reconstruction error, counted (1 + ``edge_weight``)× at the shapes' outlines (``edges``), plus
    ``kl_weight`` × KL(q(z|x) ‖ N(0, I)), the KL summed over the latent and divided by the number of pixel values:
    the per-value form of SD's summed loss with weight 1e-6. (The same 1e-6 on a per-value KL would be 12 288
    times too strong here, and blurs the pictures.) The outlines are 7% of the pixels; a plain mean over a flat
    background lets small triangles' tips go soft, and what the encoder drops no UNet can draw (model card,
    Lesson 5: with 4.0 held-out round trips keep 98% of single shapes instead of 91%)."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float, edge_weight: float = 0.0):
        super().__init__()
        self.vae, self.kl_weight, self.edge_weight = vae, kl_weight, edge_weight

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        posterior = self.vae.encode(x)
        reconstruction = self.vae.decode(posterior.sample(generator)).float()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum()  # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ μ² + σ² − 1 − log σ²
        error = (reconstruction - x).pow(2)  # (B, 3, H, W)
        if self.edge_weight:  # error × (1 + w) where edges(x); 0 is a plain mean squared error
            error = error * (1 + self.edge_weight * edges(x))
        return error.mean() + self.kl_weight * kl / x.numel()


class DecoderLoss(nn.Module):
    """The decoder phase's loss: mean squared error of decoding z ~ q(z|x) plus Gaussian noise of std ``noise``
    (in the VAE's own latent units), the encoder frozen."""

    def __init__(self, vae: AutoencoderKL, noise: float):
        super().__init__()
        self.vae, self.noise = vae, noise

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            z = self.vae.encode(x).sample(generator).float()
        z = z + self.noise * torch.randn(z.shape, generator=generator).to(z.device)
        return F.mse_loss(self.vae.decode(z).float(), x)


class NoisePrediction(nn.Module):
    """Text encoder and UNet as one module (so that data-parallel training syncs both): ε_θ(z_t, t, text)."""

    def __init__(self, text_encoder: CLIPTextModel, unet: UNet2DConditionModel):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, zt: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(zt, t, self.text_encoder(ids))


def sample_timesteps(n: int, generator: torch.Generator, T: int = 1000) -> torch.Tensor:
    """Half uniform over [0, T), half uniform over [HIGH_NOISE_FROM, T): see the module docstring."""
    uniform = torch.randint(0, T, (n,), generator=generator)
    high = torch.randint(HIGH_NOISE_FROM, T, (n,), generator=generator)
    return torch.where(torch.arange(n) % 2 == 0, uniform, high)


def eps_loss(model: nn.Module, scheduler, ids, z0, generator) -> torch.Tensor:
    """The ε objective: noise z0 to a random t with q(z_t | z0), ask the network which noise it was; each
    sample's error weighted by w(t) = 1 − ᾱ_t (see the module docstring)."""
    t = sample_timesteps(len(z0), generator)
    noise = torch.randn(z0.shape, generator=generator)
    zt = scheduler.add_noise(z0.cpu(), noise, t).to(z0.device)  # √ᾱ_t·z0 + √(1 − ᾱ_t)·ε
    error = (model(zt, t.to(z0.device), ids).float() - noise.to(z0.device)).pow(2).mean(dim=(1, 2, 3))  # (B,)
    weight = 1 - scheduler.alphas_cumprod[t]  # 1 − ᾱ_t = 1 / (1 + SNR(t))
    return (weight.to(z0.device) * error).mean()


class LatentPool:
    """The UNet phase's pictures, encoded once by the frozen VAE: q(z|x) (its mean and std) and the caption.

    Encoding each batch anew cost a fifth of every UNet step; encoding ``n`` pictures up front costs a few
    minutes, and each step then draws a fresh z ~ q(z|x) for pictures picked from the pool.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        seeds,
        n: int,
        device: torch.device,
        pair_share: float = shapes.PAIR_SHARE,
        chunk: int = 256,
    ):
        moments, self.captions = [], []
        with torch.no_grad(), autocast(device):
            for i in range(math.ceil(n / chunk)):
                x, captions = shapes.batch(seeds(i), min(chunk, n - i * chunk), pair_share=pair_share)
                posterior = vae.encode(x.to(device))
                moments.append(torch.cat([posterior.mean, posterior.logvar], dim=1).float())
                self.captions += captions
        self.moments = torch.cat(moments)  # (n, 2·4, h, w): q(z|x)'s mean and log-variance, as quant_conv gives them
        self.vae = vae

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """n scaled latents z0 ~ q(z|x) of pictures drawn from the pool, and their captions."""
        index = torch.randint(len(self.moments), (n,), generator=generator)
        z0 = self.vae.scale_latents(DiagonalGaussian(self.moments[index]).sample(generator))
        return z0, [self.captions[i] for i in index]


# ---------------------------------------------------------------------------------------------------------
# Training


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ, with d warming up as (1 + n)/(10 + n) so early weights fade quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        weights = [v.float() for v in model.state_dict().values()]  # the shadow's order: it was made from this
        torch._foreach_lerp_(list(self.shadow.values()), weights, 1 - d)  # one kernel launch per group, on a GPU


class Trainer:
    """Both phases, with the state that ``--resume`` restores."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.rank, self.world = world()
        self.device = pick_device(self.rank)
        # Denormal floats (|x| < 1.2e-38, e.g. in Adam's second moments) take a slow path on CPUs: without this
        # the VAE's steps grew from 0.7 s to 15 s within 170 steps (measured). Flushing them to zero is harmless.
        torch.set_flush_denormal(True)
        torch.manual_seed(settings.seed)  # the initial weights
        self.tokenizer = load_tokenizer()
        self.vae = AutoencoderKL(dataclasses.replace(VAE)).to(self.device)  # a copy: its scaling factor is set
        # q(z|x) starts nearly deterministic (σ ≈ 0.05). With the default init log σ² ≈ 0, the decoder first sees
        # latents drowned in unit noise and learns to blur; the reconstruction loss pulls σ down only slowly (after
        # 700 steps it was still 0.52 against latents spread 3.3) and the tiny KL weight never does.
        with torch.no_grad():
            self.vae.quant_conv.bias[VAE.latent_channels :] = VAE_INIT_LOGVAR
        self.text_encoder = CLIPTextModel(TEXT).to(self.device)
        self.unet = UNet2DConditionModel(UNET).to(self.device)
        self.scheduler = make_scheduler("ddpm")  # SD's noise schedule: scaled_linear 0.00085 … 0.012
        # fused: each optimizer's whole update in one kernel per parameter group (a UNet step 6% faster, measured)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=settings.vae_lr, fused=True)
        self.opt = torch.optim.AdamW(
            [*self.text_encoder.parameters(), *self.unet.parameters()], lr=settings.lr, fused=True
        )
        self.decoder_opt = torch.optim.Adam(self.decoder_parameters(), lr=settings.decoder_lr, fused=True)
        self.ema = {
            "text_encoder": EMA(self.text_encoder, settings.ema_decay),
            "unet": EMA(self.unet, settings.ema_decay),
        }
        self.phase, self.step, self.scaling_factor = "vae", 0, 1.0
        self.losses: dict[str, list[float]] = {"vae": [], "unet": [], "decoder": []}
        self.seconds = 0.0

    @property
    def state_file(self) -> Path:
        return self.s.out / "train_state.pt"

    def seed_of(self, step: int) -> int:
        """Every batch from its own seed: a resumed run draws what the uninterrupted one would have."""
        return ((self.s.seed * 1_000_003 + step) * 64 + self.rank) * 2 + (self.phase == "unet")

    # The two phases ------------------------------------------------------------------------------------

    def run(self) -> None:
        self.train_phases()
        if self.rank == 0:
            self.export(self.s.out)
            self.plot_losses(self.s.out / "loss.png")

    def train_phases(self) -> None:
        if self.phase == "vae":
            self.train_vae()
            self.scaling_factor = self.vae.config.scaling_factor = self.measure_scaling_factor()
            self.phase, self.step = "unet", 0
            self.save_state()
        if self.phase == "unet":
            self.train_unet()
            self.phase, self.step = "decoder", 0
            self.save_state()
        if self.phase == "decoder":
            self.train_decoder()
            self.phase = "done"
            self.save_state()

    def train_vae(self) -> None:
        model = self.parallel(VAELoss(self.vae, self.s.kl_weight, self.s.vae_edge_weight))
        bar = self.progress(self.s.vae_steps, "VAE")
        while self.step < self.s.vae_steps:
            start = time.perf_counter()
            x, _ = shapes.batch(self.seed_of(self.step), self.s.vae_batch // self.world)
            generator = torch.Generator().manual_seed(self.seed_of(self.step))
            lr = self.s.vae_lr * 0.5 * (1 + math.cos(math.pi * self.step / self.s.vae_steps))  # cosine decay
            with autocast(self.device), manual_attention():  # the hand-written path trains faster here (measured)
                loss = model(x.to(self.device), generator)
            self.optimise(self.vae_opt, loss, lr, self.vae.parameters())
            self.after_step("vae", loss, bar, start)

    @torch.no_grad()
    def measure_scaling_factor(self, n: int = 512) -> float:
        """1 / std of the VAE's latents over n pictures: the UNet then sees latents of unit variance."""
        x, _ = shapes.batch(self.s.seed + 10**9, n)
        generator = torch.Generator().manual_seed(self.s.seed)
        z = torch.cat([self.vae.encode(chunk.to(self.device)).sample(generator) for chunk in x.split(64)])
        return float(1 / z.float().std())

    def train_unet(self) -> None:
        self.vae.eval().requires_grad_(False)
        model = self.parallel(NoisePrediction(self.text_encoder, self.unet))
        warmup = min(200, self.s.unet_steps // 10 + 1)
        start = time.perf_counter()
        # Pool seeds sit above any step's seed (10⁶ + i); a resumed run encodes the same pool again.
        pool = LatentPool(self.vae, lambda i: self.seed_of(10**6 + i), self.s.pool, self.device, self.s.pool_pairs)
        self.seconds += time.perf_counter() - start
        bar = self.progress(self.s.unet_steps, "UNet")
        while self.step < self.s.unet_steps:
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(self.seed_of(self.step))
            z0, captions = pool.sample(self.s.batch // self.world, generator)
            drop = torch.rand(len(captions), generator=generator) < self.s.caption_dropout
            ids = self.tokenizer(["" if d else c for d, c in zip(drop, captions, strict=True)]).to(self.device)
            progress = self.step / self.s.unet_steps
            lr = self.s.lr * min(1.0, (self.step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
            with autocast(self.device), manual_attention():
                loss = eps_loss(model, self.scheduler, ids, z0, generator)
            self.optimise(self.opt, loss, lr, [*self.text_encoder.parameters(), *self.unet.parameters()])
            self.ema["text_encoder"].update(self.text_encoder)
            self.ema["unet"].update(self.unet)
            self.after_step("unet", loss, bar, start)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.vae.post_quant_conv.parameters(), *self.vae.decoder.parameters()]

    def train_decoder(self) -> None:
        self.vae.requires_grad_(False)  # the encoder stays as it was: the UNet learned its latent space
        for p in self.decoder_parameters():
            p.requires_grad_(True)
        spread = 1 / self.scaling_factor  # the std of the VAE's latents (see measure_scaling_factor)
        model = self.parallel(DecoderLoss(self.vae, self.s.decoder_noise * spread))
        bar = self.progress(self.s.decoder_steps, "decoder")
        while self.step < self.s.decoder_steps:
            start = time.perf_counter()
            seed = self.seed_of(10**6 + self.step)  # above the VAE phase's seeds: pictures that phase did not see
            x, _ = shapes.batch(seed, self.s.vae_batch // self.world)
            generator = torch.Generator().manual_seed(seed)
            lr = self.s.decoder_lr * 0.5 * (1 + math.cos(math.pi * self.step / self.s.decoder_steps))
            with autocast(self.device), manual_attention():
                loss = model(x.to(self.device), generator)
            self.optimise(self.decoder_opt, loss, lr, self.decoder_parameters())
            self.after_step("decoder", loss, bar, start)

    # Plumbing of one step -------------------------------------------------------------------------------

    def parallel(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None
        )

    def optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, params) -> None:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(params), 1.0)
        opt.step()

    def progress(self, total: int, name: str):
        return tqdm(total=total, initial=self.step, desc=name, disable=self.rank != 0, mininterval=5)

    def after_step(self, phase: str, loss: torch.Tensor, bar, start: float) -> None:
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"{phase} loss is {value} at step {self.step}; lower the learning rate")
        self.losses[phase].append(value)
        self.step += 1
        self.seconds += time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{sum(self.losses[phase][-50:]) / len(self.losses[phase][-50:]):.4f}")
        if self.step % self.s.save_every == 0:
            self.save_state()

    # State, export, figures --------------------------------------------------------------------------------

    def save_state(self) -> None:
        if self.rank != 0:
            return
        state = {
            "phase": self.phase,
            "step": self.step,
            "scaling_factor": self.scaling_factor,
            "seconds": self.seconds,
            "losses": {k: torch.tensor(v) for k, v in self.losses.items()},
            "vae": self.vae.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "ema": {k: e.shadow for k, e in self.ema.items()},
            "ema_updates": self.ema["unet"].updates,
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "decoder_opt": self.decoder_opt.state_dict(),
        }
        self.s.out.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_file)  # an interruption while writing keeps the previous state

    def load_state(self) -> None:
        state = torch.load(self.state_file, map_location=self.device, weights_only=True)
        self.phase, self.step = state["phase"], state["step"]
        self.scaling_factor, self.seconds = state["scaling_factor"], state["seconds"]
        self.vae.config.scaling_factor = self.scaling_factor
        self.losses = {k: v.tolist() for k, v in state["losses"].items()}
        for name in ("vae", "text_encoder", "unet"):
            getattr(self, name).load_state_dict(state[name])
        for name, ema in self.ema.items():
            ema.shadow, ema.updates = state["ema"][name], state["ema_updates"]
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.decoder_opt.load_state_dict(state["decoder_opt"])

    def export(self, folder: Path) -> None:
        """The EMA weights as a diffusers model folder, in fp16 (half the bytes; minisd loads it as fp32)."""
        self.text_encoder.load_state_dict(self.ema["text_encoder"].shadow)
        self.unet.load_state_dict(self.ema["unet"].shadow)
        write_model_folder(folder, self.tokenizer, self.text_encoder, self.unet, self.vae, torch.float16)
        settings = dataclasses.asdict(self.s)
        del settings["out"]
        meta = {
            **settings,  # every setting, so that a folder tells how it was trained
            "world_size": self.world,
            "device": str(self.device),
            "train_seconds": round(self.seconds, 1),
            "scaling_factor": self.scaling_factor,
        }
        (folder / "training.json").write_text(json.dumps(meta, indent=2) + "\n")

    def plot_losses(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
        for ax, (phase, values) in zip(axes, self.losses.items(), strict=True):
            values = torch.tensor(values or [float("nan")])
            window = max(1, min(50, len(values) // 10))
            smooth = values.unfold(0, window, 1).mean(1) if len(values) >= window else values
            ax.plot(values, alpha=0.25, color="C0")
            ax.plot(range(window - 1, window - 1 + len(smooth)), smooth, color="C0")
            ax.set(title=f"{phase} loss", xlabel="step", yscale="log")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def write_model_folder(folder: Path, tokenizer, text_encoder, unet, vae, dtype=torch.float32) -> None:
    """A diffusers model folder that both minisd and diffusers' StableDiffusionPipeline load."""
    folder = Path(folder)
    for name, model in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
        save_component(name, folder, model, dtype)
    tokenizer.save(folder / "tokenizer")
    scheduler = make_scheduler("ddim").config  # SD's noise schedule, with the shipped sampler's settings
    config = {
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_start": scheduler.beta_start,
        "beta_end": scheduler.beta_end,
        "beta_schedule": scheduler.beta_schedule,
        "num_train_timesteps": scheduler.num_train_timesteps,
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    } | SHIPPED_SCHEDULER
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    defaults = dataclasses.asdict(GenerationDefaults(guidance_scale=SHIPPED_GUIDANCE))  # minisd's own file
    (folder / GenerationDefaults.FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", config["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def train(settings: Settings, resume: bool = False) -> Path:
    """Train minisd-tiny into ``settings.out``; returns the model folder."""
    trainer = Trainer(settings)
    if resume:
        if not trainer.state_file.is_file():
            raise FileNotFoundError(f"--resume: no {trainer.state_file} to resume from; start without --resume")
        trainer.load_state()
    try:
        trainer.run()
    except KeyboardInterrupt:
        trainer.save_state()
        if trainer.rank == 0:
            print(f"\ninterrupted at {trainer.phase} step {trainer.step}; state saved, continue with --resume")
        raise
    finally:
        if trainer.world > 1:
            dist.destroy_process_group()
    return settings.out
