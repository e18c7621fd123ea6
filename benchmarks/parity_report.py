"""Print the parity errors that the tests assert bounds on: minisd against diffusers/transformers.

    python benchmarks/parity_report.py

Every figure is max |minisd − reference| (relative ones divided by max |reference|), with both sides
holding the same perturbed random weights, computed here and now in fp32 on the CPU.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import max_rel_err
from tests.test_clip import SD1, SMALL, compare, ids, ours_from, reference
from tests.test_unet import CONFIGS as UNETS
from tests.test_unet import inputs, sd1_reference_config
from tests.test_unet import pair as unet_pair
from tests.test_vae import CONFIGS as VAES
from tests.test_vae import images
from tests.test_vae import pair as vae_pair
from tests.test_vae import sd1_reference_config as vae_sd1
from tests.tiny_sd import build_reference, reference_scheduler, save_diffusers


@torch.no_grad()
def main() -> None:
    print("CLIP text encoder vs transformers.CLIPTextModel (max abs, batch 2):")
    for name, kw in (("small", SMALL), ("SD1.x", SD1)):
        hf = reference(**kw)
        last, skip = compare(hf, ours_from(hf), ids())
        print(f"  {name:6s} last layer {last:.2e}   layer -2 {skip:.2e}")

    print("UNet vs diffusers.UNet2DConditionModel (max rel):")
    for name, kw in [*UNETS.items(), ("SD1.x", sd1_reference_config())]:
        ref, ours = unet_pair(kw, seed=3)
        h, w = (16, 16) if name == "SD1.x" else (12, 20)
        x, t, c = inputs(ours.config, h, w)
        print(f"  {name:12s} {h}×{w}  {max_rel_err(ours(x, t, c), ref(x, t, c).sample):.2e}")
        del ref, ours

    print("VAE vs diffusers.AutoencoderKL (max rel):")
    for name, kw in [*VAES.items(), ("SD1.x", vae_sd1())]:
        ref, ours = vae_pair(kw, seed=3)
        x = images(64, 64) if name == "SD1.x" else images(40, 56)
        mine, theirs = ours.encode(x), ref.encode(x).latent_dist
        z = theirs.mean
        errs = (
            max_rel_err(mine.mean, theirs.mean),
            max_rel_err(mine.logvar, theirs.logvar),
            max_rel_err(ours.decode(z), ref.decode(z).sample),
            max_rel_err(mine.sample(torch.Generator().manual_seed(0)), theirs.sample(torch.Generator().manual_seed(0))),
        )
        print(f"  {name:12s} mean {errs[0]:.2e}  logvar {errs[1]:.2e}  decode {errs[2]:.2e}  sample {errs[3]:.2e}")

    import minisd

    print("Pipelines vs StableDiffusionPipeline / Img2ImgPipeline (tiny random SD, 8 steps, guidance 6, 48×80):")
    ref = build_reference()
    folder = save_diffusers(ref, Path(tempfile.mkdtemp()) / "sd")
    pipe = minisd.load_pipeline(folder)
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**ref.components)
    image = pipe.to_pil(torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(0)))[0]
    for name in minisd.SCHEDULERS:
        eta = 1.0 if name == "ddim" else 0.0
        common = dict(negative_prompt="blurry", guidance_scale=6.0, eta=eta)
        txt = dict(height=48, width=80, **common)
        ours = pipe.text_to_image("a red circle", steps=8, scheduler=name, seed=7, progress=False, **txt)
        ours_i = pipe.image_to_image(
            "a red circle", image, strength=0.6, steps=10, scheduler=name, seed=11, progress=False, **common
        )
        ref.scheduler = img2img.scheduler = reference_scheduler(folder, name)
        theirs = {
            kind: ref("a red circle", num_inference_steps=8, generator=gen(7), output_type=kind, **txt).images
            for kind in ("latent", "np")
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lat = img2img(
                "a red circle", image, strength=0.6, num_inference_steps=10, generator=gen(11), output_type="latent",
                **common,
            ).images  # fmt: skip
        pixels = torch.from_numpy((theirs["np"] * 255).round())
        mine = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in ours.images])
        print(
            f"  {name:16s} txt2img latents {max_rel_err(ours.latents, theirs['latent']):.2e}, pixels off by more "
            f"than 1/255: {((mine - pixels).abs() > 1).float().mean().item():.4%}   "
            f"img2img latents {max_rel_err(ours_i.latents, lat):.2e}"
        )


def gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


if __name__ == "__main__":
    main()
