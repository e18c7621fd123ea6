"""Inpainting: redraw the part of a picture under a mask (white), keep the rest (black).

Two ways, chosen by the UNet's input channels (``pipe.inpaint`` picks):

* 9 channels, SD's inpainting checkpoints: the UNet sees, next to x_t, the mask m at latent size and the
  latent of the picture with the masked part blanked, E(x ⊙ (1 − m)); trained that way, it fills in.

      UNet input = [scale_model_input(x_t), m, E(x ⊙ (1 − m))]          (B, 4 + 1 + 4, h, w)

* 4 channels, any other model: after each step the known part is put back, noised to the next timestep
  ("latent blending", as diffusers' inpainting pipeline does for such models). The model never sees the
  mask, so the seam shows more: a fallback, with a warning.

      x_{t−1} ← m ⊙ x_{t−1} + (1 − m) ⊙ q(x_{t−1} | x_0 = E(x))

Pictures and masks of any size are resized to the output size (the model's native size unless given) with
Lanczos filtering, the mask made grey and binarised at 0.5, as diffusers' image processors do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_tensor(picture: Image.Image, width: int, height: int) -> torch.Tensor:
    """A picture resized to width × height, as (1, C, H, W) in [0, 1]."""
    if picture.size != (width, height):
        picture = picture.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(picture).astype(np.float32) / 255.0  # (H, W, C) or (H, W)
    return torch.from_numpy(array.reshape(height, width, -1)).permute(2, 0, 1)[None]


def picture_tensor(picture: Image.Image, width: int, height: int) -> torch.Tensor:
    """(1, 3, H, W) in [−1, 1]."""
    return to_tensor(picture.convert("RGB"), width, height) * 2 - 1


def mask_tensor(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """(1, 1, H, W): 1 where the picture is redrawn (white), 0 where it is kept. Resized before it is made
    grey, then binarised at 0.5, in diffusers' order."""
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    return (to_tensor(mask.convert("L"), width, height) >= 0.5).float()


def mask_latent(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The mask at the latent's size (nearest neighbour): (1, 1, h, w)."""
    return F.interpolate(mask, size=(h, w))


def blend_known_region(loop: Iterator, scheduler, timesteps, image_latents, noise, mask) -> Iterator:
    """For a 4-channel model: after each step, keep the denoised sample only under the mask; elsewhere put
    the picture's latent back, noised to the next step's timestep (the clean latent after the last step).

    The loop continues from ``step.x_prev``, so replacing it here steers the rest of the loop."""
    for i, step in enumerate(loop):
        known = image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2].repeat(len(noise)))
        step.x_prev = (1 - mask) * known + mask * step.x_prev
        yield step
