"""The whole of Stable Diffusion: prompt in, picture out, every intermediate kept for looking at.

    text_to_image:
      1. prompt, negative prompt --tokenizer, CLIP--> c, c_neg               (B, 77, 768) each
      2. x_T ~ N(0, I) · init_noise_sigma                                    (B, 4, H/8, W/8)
      3. for t in the scheduler's timesteps:
           ε_u, ε_c = UNet([x_t, x_t], t, [c_neg, c])                        one batch of 2B
           ε = ε_u + s·(ε_c − ε_u)        classifier-free guidance (Ho & Salimans 2022, eq. 6)
           x_{t−1} = scheduler.step(ε, t, x_t)
      4. picture = VAE.decode(x_0 / scaling_factor)                          (B, 3, H, W)

    image_to_image starts step 2 from the user's picture instead: encoded, then noised to the timestep that
    ``strength`` picks (q(x_t | x_0)), and runs only the remaining steps (Meng et al. 2022, SDEdit).
    inpaint redraws only under a mask: an inpainting UNet sees the mask and the masked picture's latent as
    extra input channels at step 3, any other model has the kept part put back after each step (inpainting.py).

Read it in that order: ``load_pipeline`` builds the parts, ``text_to_image`` makes x_T and runs ``denoise``
(step 3, a generator that yields each step as a ``TraceStep``), and ``unet_latents_to_images`` is step 4.

Random numbers come from one ``torch.Generator("cpu").manual_seed(seed)`` in the order diffusers draws
them (initial latent or VAE sample + noise, then the ancestral samplers' noise), so that a seed gives the
same picture as diffusers' StableDiffusionPipeline with the same weights.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checkpoints import tensor_specs
from .clip import CLIPTextConfig, CLIPTextModel, load_text_encoder
from .config import CheckpointError, GenerationDefaults
from .inpainting import blend_known_region, mask_latent, mask_tensor, picture_tensor
from .layers import Attention
from .schedulers import DDIM, Scheduler, load_scheduler, make_scheduler
from .tokenizer import CLIPTokenizer, load_tokenizer
from .unet import UNet2DConditionModel, UNetConfig, load_unet
from .vae import AutoencoderKL, VAEConfig, load_vae
from .variants import configs_for, detect

# minisd's own small model: weights/minisd-tiny in the repository, linked as minisd/data/minisd-tiny, which an
# installed package carries as a copy (where links are not checked out, the repository's folder is used).
PACKAGED_MODEL = Path(__file__).parent / "data" / "minisd-tiny"
SHIPPED_MODEL = PACKAGED_MODEL if PACKAGED_MODEL.is_dir() else Path(__file__).parent.parent / "weights" / "minisd-tiny"


@dataclass
class TraceStep:
    """One step of the loop: everything that went in and came out, on the pipeline's device."""

    t: int
    x_t: torch.Tensor  # (B, 4, h, w): the sample going into the step (σ samplers: before scale_model_input)
    pred_x0: torch.Tensor  # the scheduler's estimate of the clean latent at this step
    eps_uncond: torch.Tensor | None  # ε_θ(x_t, t, ∅): None when guidance is off (scale ≤ 1)
    eps_cond: torch.Tensor  # ε_θ(x_t, t, c)
    eps: torch.Tensor | None = None  # the guided ε that the scheduler stepped with
    x_prev: torch.Tensor | None = None  # x_{t−1}: the sample after the step
    model_input: torch.Tensor | None = None  # what the UNet saw: scale_model_input(x_t, t)

    def cpu(self) -> TraceStep:
        return TraceStep(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})


@dataclass
class Result:
    images: list[Image.Image]
    latents: torch.Tensor  # the final latents, scaled as the UNet sees them: (B, 4, h, w)
    trace: list[TraceStep] | None = None  # every step, on the CPU, when asked for
    timesteps: list[int] = field(default_factory=list)


class StableDiffusion:
    """The three models and the loop. Build with :func:`load_pipeline`."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: Scheduler,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        defaults: GenerationDefaults | None = None,
    ):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.scheduler = scheduler
        self.defaults = defaults or GenerationDefaults()  # what a job's guidance_scale=None stands for
        self.device, self.dtype = torch.device(device), dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)  # 8: pixels per latent pixel
        self.vae_tile: int | None = None  # see set_low_memory
        self.drop_text_encoder = False

    def set_low_memory(
        self, attention_chunk: int | None = None, vae_tile: int | None = None, drop_text_encoder: bool = False
    ) -> StableDiffusion:
        """Trade time for memory. ``attention_chunk``: every attention layer attends that many queries at a
        time (the same result). ``vae_tile``: decode latent tiles of that side (64: 512 pixels) one at a time
        (the same pictures, in several times the time: AutoencoderKL.decode_tiled). ``drop_text_encoder``: free
        the text encoder once the first prompts are encoded (a one-shot generation; the next prompt needs a new
        pipeline)."""
        for module in self.unet.modules():
            if isinstance(module, Attention):
                module.query_chunk = attention_chunk
        self.vae_tile, self.drop_text_encoder = vae_tile, drop_text_encoder
        return self

    def channels_last(self) -> StableDiffusion:
        """Store the UNet's and the VAE's convolution weights pixel-major (NHWC): the CPU's oneDNN convolutions,
        bf16 above all, run faster so (benchmarks/RESULTS.md); results equal to float rounding."""
        self.unet.to(memory_format=torch.channels_last)
        self.vae.to(memory_format=torch.channels_last)
        return self

    def compile(self) -> StableDiffusion:
        """``torch.compile`` the UNet and the VAE decoder in place (the first call compiles: minutes on a CPU;
        later calls run the fused kernels). The same results to float rounding (tests/test_low_memory.py)."""
        self.unet.compile()
        self.vae.decoder.compile()
        return self

    # 1. Text understanding -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], layer: int = -1) -> torch.Tensor:
        """Prompts -> (B, 77, width) text vectors."""
        ids = self.tokenizer(prompts).to(self.device)  # (B, 77)
        return self.text_encoder(ids, layer=layer).to(self.dtype)

    def encode_prompts(
        self, prompts: list[str], negatives: list[str], guidance_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(c, c_neg): the prompts' and the negative prompts' text vectors; c_neg is None when guidance is off."""
        if not isinstance(guidance_scale, int | float) or not 0 <= guidance_scale < math.inf:
            raise ValueError(
                f"guidance_scale must be a finite number ≥ 0 (≤ 1 turns guidance off), got {guidance_scale}"
            )
        if self.text_encoder is None:
            raise ValueError(
                "the text encoder was freed after its first use (drop_text_encoder): load the pipeline again"
            )
        texts = self.encode_prompt(prompts), self.encode_prompt(negatives) if guidance_scale > 1 else None
        if self.drop_text_encoder:
            self.text_encoder = None  # its memory is free for the UNet and the VAE
        return texts

    # 2. The image information creator: the denoising loop ---------------------------------------------

    @torch.no_grad()
    def denoise(
        self,
        x: torch.Tensor,
        scheduler: Scheduler,
        timesteps: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        generator: torch.Generator | None = None,
        extra_channels: torch.Tensor | None = None,
    ) -> Iterator[TraceStep]:
        """Run the scheduler's ``timesteps`` from x, yielding each step; the last step's ``x_prev`` is x_0.

        x: (B, 4, h, w) on the scheduler's scale; cond and uncond: (B, 77, width), uncond None for no guidance.
        ``extra_channels``: what an inpainting UNet sees besides x_t (mask, masked-image latent), (B, 5, h, w).
        The loop goes on from each yielded ``step.x_prev``: a consumer may replace it (inpainting does).
        """
        for t in timesteps:
            x_in = scheduler.scale_model_input(x, t)
            unet_in = x_in if extra_channels is None else torch.cat([x_in, extra_channels], dim=1)  # (B, 9, h, w)
            if uncond is None:
                eps_uncond, eps_cond = None, self.unet(unet_in, t, cond)
                eps = eps_cond
            else:  # both predictions from one UNet call on a doubled batch
                eps_uncond, eps_cond = self.unet(torch.cat([unet_in] * 2), t, torch.cat([uncond, cond])).chunk(2)
                # Classifier-free guidance (Ho & Salimans 2022, eq. 6): ε = ε_u + s·(ε_c − ε_u)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            out = scheduler.step(eps, t, x, generator=generator)
            step = TraceStep(int(t), x, out.pred_original_sample, eps_uncond, eps_cond, eps, out.prev_sample, x_in)
            yield step
            x = step.x_prev

    def run(self, loop: Iterator[TraceStep], x: torch.Tensor, n: int, keep_trace: bool, on_step, progress) -> Result:
        """Run the loop (n steps from x) to its end, keep what was asked for, and decode the last sample."""
        trace, timesteps = [], []
        for i, step in enumerate(tqdm(loop, total=n, disable=not progress, desc="denoising")):
            if not torch.isfinite(step.x_prev).all():
                raise FloatingPointError(
                    f"the latents hold NaN or Inf after step {i} (t = {step.t}); {self.overflow_hint()}"
                )
            if keep_trace:
                trace.append(step.cpu())
            if on_step is not None:
                on_step(i, step.t, step.x_t, step.pred_x0)
            x = step.x_prev
            timesteps.append(step.t)
        images = self.to_pil(self.unet_latents_to_images(x))
        return Result(images, x, trace if keep_trace else None, timesteps)

    def overflow_hint(self) -> str:
        if self.dtype == torch.float16:
            return "float16 overflows in some models: load the pipeline with dtype=torch.bfloat16 or float32"
        return "the weights may be damaged (check them with `minisd inspect`), or the settings extreme"

    # 3. The image decoder -----------------------------------------------------------------------------

    @torch.no_grad()
    def unet_latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents on the UNet's scale (B, 4, h, w) -> images in [0, 1], (B, 3, H, W) float32.

        (``vae.decode`` takes the VAE's own, unscaled latents and returns [−1, 1].)
        """
        z = self.vae.unscale_latents(latents)
        images = self.vae.decode_tiled(z, self.vae_tile) if self.vae_tile else self.vae.decode(z)
        if not torch.isfinite(images).all():  # never saved as a black or white picture
            raise FloatingPointError(f"the VAE decoder gave NaN or Inf; {self.overflow_hint()}")
        return (images.float() / 2 + 0.5).clamp(0, 1)

    decode = unet_latents_to_images  # its name before 0.2, kept working

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        """(B, 3, H, W) in [0, 1] -> PIL images, rounded to 8 bits as diffusers rounds."""
        array = (images.cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
        return [Image.fromarray(a) for a in array]

    # The jobs: make x_T (or noise a picture's latent), then run the loop ---------------------------

    @torch.no_grad()
    def text_to_image(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        steps: int = 50,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = 0,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        num_images: int = 1,
        on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        trace: bool = False,
        progress: bool = True,
    ) -> Result:
        """Generate ``num_images`` pictures per prompt. See the module docstring for the steps."""
        prompts, negatives = repeat_prompts(prompt, negative_prompt, num_images)
        h, w = self.latent_size(height, width)
        self.check_memory(len(prompts), h, w)
        sched, timesteps = self.sampler(scheduler, eta, steps, strength=1.0)
        generator = make_generator(seed)

        x = randn((len(prompts), self.unet.config.in_channels, h, w), generator, self.device, self.dtype)
        x = x * sched.init_noise_sigma  # x_T ~ N(0, σ_max²)
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale)
        loop = self.denoise(x, sched, timesteps, cond, uncond, guidance_scale, generator)
        return self.run(loop, x, len(timesteps), trace, on_step, progress)

    @torch.no_grad()
    def image_to_image(
        self,
        prompt: str | list[str],
        image: Image.Image | torch.Tensor,
        strength: float = 0.8,
        negative_prompt: str | list[str] = "",
        steps: int = 50,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = 0,
        eta: float = 0.0,
        num_images: int = 1,
        on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        trace: bool = False,
        progress: bool = True,
    ) -> Result:
        """Redraw ``image`` after the prompt: ``strength`` 0 keeps it, 1 replaces it entirely."""
        prompts, negatives = repeat_prompts(prompt, negative_prompt, num_images)
        pixels = self.preprocess(image).to(self.device, self.dtype)  # (1, 3, H, W) in [−1, 1]
        self.check_memory(len(prompts), pixels.shape[-2] // self.vae_scale, pixels.shape[-1] // self.vae_scale)
        sched, timesteps = self.sampler(scheduler, eta, steps, strength)
        generator = make_generator(seed)

        x0 = self.encode_image(pixels, generator).expand(len(prompts), -1, -1, -1)  # (B, 4, h, w)
        noise = randn(x0.shape, generator, self.device, self.dtype)
        x = sched.add_noise(x0, noise, timesteps[:1].repeat(len(prompts)))  # q(x_t | x_0) at the first t kept
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale)
        loop = self.denoise(x, sched, timesteps, cond, uncond, guidance_scale, generator)
        return self.run(loop, x, len(timesteps), trace, on_step, progress)

    @torch.no_grad()
    def inpaint(
        self,
        prompt: str | list[str],
        image: Image.Image,
        mask: Image.Image,
        strength: float = 1.0,
        negative_prompt: str | list[str] = "",
        steps: int = 50,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = 0,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        num_images: int = 1,
        on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        trace: bool = False,
        progress: bool = True,
    ) -> Result:
        """Redraw ``image`` where ``mask`` is white after the prompt, keep it where black (see inpainting.py).

        A 9-channel inpainting UNet sees the mask; any other model falls back to latent blending (a warning).
        Random numbers are drawn in diffusers' order: the picture's latent (when needed), the noise, the
        masked picture's latent."""
        prompts, negatives = repeat_prompts(prompt, negative_prompt, num_images)
        h, w = self.latent_size(height, width)
        B, H, W = len(prompts), h * self.vae_scale, w * self.vae_scale
        self.check_memory(B, h, w)
        sched, timesteps = self.sampler(scheduler, eta, steps, strength)
        nine = self.unet.config.in_channels == 9
        if not nine:
            warnings.warn(
                "this model's UNet has 4 input channels, not an inpainting model's 9: inpainting by latent "
                "blending (the known part put back after each step); an inpainting checkpoint fills in better",
                stacklevel=3,
            )
        generator = make_generator(seed)

        pixels = picture_tensor(image, W, H).to(self.device, self.dtype)  # (1, 3, H, W) in [−1, 1]
        m = mask_tensor(mask, W, H).to(self.device, self.dtype)  # (1, 1, H, W), 1 = redraw
        x0 = self.encode_image(pixels, generator).expand(B, -1, -1, -1) if not nine or strength < 1 else None
        noise = randn((B, self.vae.config.latent_channels, h, w), generator, self.device, self.dtype)
        # x_T ~ N(0, σ_max²) at full strength, else q(x_t | x_0) at the first t kept
        x = noise * sched.init_noise_sigma if strength == 1 else sched.add_noise(x0, noise, timesteps[:1].repeat(B))
        masked = self.encode_image(pixels * (m < 0.5), generator).expand(B, -1, -1, -1)  # (B, 4, h, w)
        m = mask_latent(m, h, w).expand(B, -1, -1, -1)  # (B, 1, h, w)
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale)
        extra = torch.cat([m, masked], dim=1) if nine else None  # (B, 5, h, w)
        loop = self.denoise(x, sched, timesteps, cond, uncond, guidance_scale, generator, extra)
        if not nine:
            loop = blend_known_region(loop, sched, timesteps, x0, noise, m)
        return self.run(loop, x, len(timesteps), trace, on_step, progress)

    # What the jobs share ------------------------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) in [−1, 1] -> a sample of its latent, on the UNet's scale: (B, 4, H/8, W/8)."""
        return self.vae.scale_latents(self.vae.encode(pixels).sample(generator))

    def sampler(self, name: str | None, eta: float, steps: int, strength: float) -> tuple[Scheduler, torch.Tensor]:
        """A fresh sampler set to ``steps``, and the timesteps a job runs: the last int(steps·strength) of them
        (a picture given to start from stands in for the earlier ones)."""
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be between 0 and 1, got {strength}")
        sched = self.make_scheduler(name, eta)
        sched.set_timesteps(steps)
        keep = min(int(steps * strength), steps)
        if keep == 0:
            raise ValueError(f"strength {strength} with {steps} steps leaves no step to run; raise either")
        return sched, sched.timesteps[(steps - keep) * sched.order :]

    def make_scheduler(self, name: str | None = None, eta: float = 0.0) -> Scheduler:
        """A fresh sampler for one generation: the model's own, or ``name`` built from the model's scheduler
        config as diffusers' ``Class.from_config`` builds it. ``eta`` is DDIM's η (0 deterministic, 1 DDPM-like)."""
        sched = make_scheduler(name or self.scheduler.name, self.scheduler.config)
        if eta:
            if not isinstance(sched, DDIM):
                raise ValueError(f"eta={eta} is DDIM's setting; {sched.name!r} has none (use scheduler='ddim')")
            sched.eta = eta
        return sched

    def check_memory(self, batch: int, h: int, w: int) -> None:
        """Refuse a size whose activations cannot fit: a lower bound from the VAE decoder's largest
        activations (three live tensors of its widest full-size layer, fp32), against the device's memory."""
        channels, n = self.vae.config.block_out_channels, len(self.vae.config.block_out_channels)
        # Level i runs at 2^(n−1−i) times the latent's side; what is upsampled into it has level i+1's channels.
        largest = max(channels[min(i + 1, n - 1)] * 4 ** (n - 1 - i) for i in range(n))  # per latent pixel
        # A tiled decode holds one tile at a time, read with the decoder's reach around it
        tile = self.vae_tile + 2 * self.vae.decoder.reach() if self.vae_tile else max(h, w)
        needed = 3 * 4 * batch * largest * min(h, tile) * min(w, tile)  # three live fp32 tensors
        available = device_memory(self.device)
        if available and needed > available:
            size, where = (
                f"{w * self.vae_scale}×{h * self.vae_scale}",
                "GPU" if self.device.type != "cpu" else "machine",
            )
            raise ValueError(
                f"{batch} picture(s) of {size} pixels need at least {needed / 2**30:,.1f} GiB of memory (the VAE "
                f"decoder alone); this {where} has {available / 2**30:,.1f} GiB: choose a smaller size or fewer images"
            )

    def latent_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The latent's (h, w) for a picture of height × width pixels (default: the model's native size)."""
        native = self.unet.config.sample_size * self.vae_scale
        height, width = native if height is None else height, native if width is None else width
        for name, size in (("height", height), ("width", width)):
            if size % self.vae_scale or size <= 0:
                hint = max(size // self.vae_scale, 1) * self.vae_scale
                raise ValueError(f"{name} {size} is not a positive multiple of {self.vae_scale}; try {hint}")
        return height // self.vae_scale, width // self.vae_scale

    def preprocess(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A PIL image -> (1, 3, H, W) in [−1, 1], resized down to multiples of 8 (as diffusers does) if needed."""
        if isinstance(image, torch.Tensor):
            if (
                image.ndim != 4
                or image.shape[1] != 3
                or image.shape[-1] % self.vae_scale
                or image.shape[-2] % self.vae_scale
            ):
                raise ValueError("an image tensor must be (B, 3, H, W) in [−1, 1] with H, W multiples of 8")
            return image
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: PIL's convert("RGB") would clip at 255
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        image = image.convert("RGB")  # grey, palette and alpha pictures too: alpha is dropped, as diffusers does
        w, h = (s - s % self.vae_scale for s in image.size)
        if (w, h) != image.size:
            warnings.warn(
                f"image is {image.size[0]}×{image.size[1]}; resized to {w}×{h}, the nearest multiples of "
                f"{self.vae_scale} below, as the VAE needs",
                stacklevel=3,
            )
            image = image.resize((w, h), resample=Image.LANCZOS)
        array = np.asarray(image).astype(np.float32) / 255.0  # (H, W, 3)
        return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def repeat_prompts(
    prompt: str | list[str], negative_prompt: str | list[str], num_images: int
) -> tuple[list[str], list[str]]:
    """Each prompt and its negative ``num_images`` times in a row, as diffusers orders the batch."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, list | tuple) else [None]
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a list of strings, got {prompt!r:.80}")
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    return [p for p in prompts for _ in range(num_images)], [n for n in negatives for _ in range(num_images)]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: the same seed gives the same numbers on every device, as diffusers recommends."""
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**64):
        raise ValueError(f"seed must be a whole number from 0 to 2**64 − 1 (or None for a random one), got {seed!r}")
    generator = torch.Generator("cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def randn(shape, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU), then moved: diffusers' randn_tensor."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on the device (the machine's RAM for the CPU); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def load_pipeline(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    config: str | Path | None = None,
    prediction_type: str | None = None,
) -> StableDiffusion:
    """Stable Diffusion from a diffusers model folder or a CompVis single file.

    ``None``: the model named by the environment variable ``MINISD_WEIGHTS``, else minisd's own small model
    (weights/minisd-tiny, trained on the shapes world; see minisd/train.py).

    ``device`` defaults to CPU (pass "cuda" or "mps" to use a GPU); ``dtype`` to float32 (float16/bfloat16
    are for GPUs; the VAE decodes fp16 in fp32). A single file holds no configs: those of its variant are
    used (SD 1.x, SD 2.x, inpainting: told from its shapes, see variants.py), or those of the diffusers model
    folder ``config`` (its tokenizer and scheduler too), as for a fine-tune of another shape.
    ``prediction_type`` ("epsilon" or "v_prediction") overrides what the model's scheduler config says
    (for an SD 2.x single file: what its hints say).
    """
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    if path is None and os.environ.get("MINISD_WEIGHTS"):
        path = os.environ["MINISD_WEIGHTS"]
    if path is None:
        if not SHIPPED_MODEL.is_dir():
            raise FileNotFoundError(
                f"minisd's own small model is not at {SHIPPED_MODEL} yet; pass the path to Stable Diffusion "
                "weights (a diffusers folder or a single file, see weights/README.md)"
            )
        path = SHIPPED_MODEL
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a diffusers model folder or a single checkpoint file")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path} is a folder without model_index.json, so not a diffusers model folder; give the folder that "
            "holds model_index.json, or a single .safetensors/.ckpt file"
        )
    configs = Path(config) if config is not None else path if path.is_dir() else None
    if configs is not None and not configs.is_dir():
        raise FileNotFoundError(f"config folder {configs} does not exist; give a diffusers model folder")

    implied = configs_for(path, prediction_type)[1] if configs is None else None  # a single file alone

    def config_of(cls, name):  # a single file's networks take their shapes from the config folder, or its variant
        if path.is_file() and configs is not None:
            return cls.from_json(configs / name / "config.json")
        return getattr(implied, name, None)

    tokenizer = load_tokenizer(configs or path)
    if implied is not None and implied.pad_id is not None:
        tokenizer.pad_id = implied.pad_id
    scheduler = make_scheduler(*implied.scheduler) if implied is not None else load_scheduler(configs or path)
    if prediction_type is not None and implied is None:
        # The folder's entries with the new one (not the filled-in config: another sampler swapped in later
        # must still take its own defaults for what the file left out, as diffusers' from_config does).
        scheduler = make_scheduler(scheduler.name, scheduler.config.given | {"prediction_type": prediction_type})
    try:
        networks = (
            load_text_encoder(path, config_of(CLIPTextConfig, "text_encoder"), dtype, device),
            load_unet(path, config_of(UNetConfig, "unet"), dtype, device),
            load_vae(path, config_of(VAEConfig, "vae"), dtype, device),
        )
    except CheckpointError as e:
        if not (path.is_file() and configs is not None):
            raise
        variant = detect(tensor_specs(path))
        raise CheckpointError(f"{e} (The file is {variant}: give a config folder of that family, or none.)") from e
    defaults = GenerationDefaults.of_folder(configs) if configs is not None else None  # a single file alone: SD's
    return StableDiffusion(tokenizer, *networks, scheduler, device, dtype, defaults)
