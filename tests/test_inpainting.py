"""Inpainting against diffusers' StableDiffusionInpaintPipeline: 9-channel models and the 4-channel fallback."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

import minisd
from minisd.checkpoints import tensor_specs
from minisd.cli import main
from minisd.variants import detect

from .conftest import max_rel_err
from .tiny_sd import build_reference, reference_scheduler, save_compvis, save_diffusers

PROMPT = "a red circle on a blue square"


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def mask(width: int, height: int) -> Image.Image:
    """White (redraw) in a rectangle right of centre, with a soft edge that binarisation must cut."""
    array = np.zeros((height, width), dtype=np.uint8)
    array[height // 4 : 3 * height // 4, width // 2 :] = 255
    array[height // 4 : 3 * height // 4, width // 2 - 2 : width // 2] = 120
    return Image.fromarray(array).convert("RGB")  # an RGB mask, made grey after resizing


@pytest.fixture(scope="module", params=["9-channel", "4-channel"])
def model(request, tmp_path_factory):
    ref = build_reference(inpainting=request.param == "9-channel")
    folder = save_diffusers(ref, tmp_path_factory.mktemp("inpaint") / "folder")
    return ref, folder, minisd.load_pipeline(folder)


def reference_inpaint(ref, folder, name, **kw):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**ref.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(folder, name)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(5), output_type="latent", **kw).images


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m"])
def test_inpaint_equals_diffusers(model, name, strength):
    ref, folder, pipe = model
    image, m = picture(45, 37), mask(50, 29)  # odd sizes, resized to 64 × 48 as diffusers resizes them
    args = dict(num_inference_steps=6, guidance_scale=6.0, height=48, width=64, strength=strength)
    theirs = reference_inpaint(ref, folder, name, image=image, mask_image=m, **args)
    with pytest.warns(UserWarning, match="latent blending") if pipe.unet.config.in_channels == 4 else nullcontext():
        ours = pipe.inpaint(PROMPT, image, m, strength=strength, steps=6, guidance_scale=6.0, height=48, width=64,
                            scheduler=name, seed=5, progress=False)  # fmt: skip
    assert max_rel_err(ours.latents, theirs) <= 1e-4


def test_ancestral_sampler_draws_in_diffusers_order(model):
    """Euler ancestral draws noise every step: equal only if every earlier draw came in the same order."""
    ref, folder, pipe = model
    image, m = picture(64, 48, 1), mask(64, 48)
    args = dict(num_inference_steps=5, guidance_scale=4.0, height=48, width=64)
    theirs = reference_inpaint(ref, folder, "euler_ancestral", image=image, mask_image=m, **args)
    ours = pipe.inpaint(PROMPT, image, m, steps=5, guidance_scale=4.0, height=48, width=64,
                        scheduler="euler_ancestral", seed=5, progress=False)  # fmt: skip
    assert max_rel_err(ours.latents, theirs) <= 1e-4


@pytest.mark.parametrize("model", ["4-channel"], indirect=True)  # only the fallback pins the kept part
def test_kept_region_stays_with_the_fallback(model):
    """With latent blending the unmasked part ends as the picture's own latent (the clean one, last step)."""
    _, _, pipe = model
    image, m = picture(64, 48, 2), Image.new("L", (64, 48), 0)  # nothing to redraw
    with pytest.warns(UserWarning):
        out = pipe.inpaint(PROMPT, image, m, steps=4, height=48, width=64, seed=1, progress=False)
    pixels = minisd.pipeline.picture_tensor(image, 64, 48)
    latent = pipe.encode_image(pixels, torch.Generator().manual_seed(1))
    assert max_rel_err(out.latents, latent) <= 1e-5


def test_inpainting_single_file_is_detected_and_loads(model, tmp_path):
    ref, folder, _ = model
    file = save_compvis(ref, tmp_path / "inpaint.safetensors")
    nine = ref.unet.config.in_channels == 9
    assert detect(tensor_specs(file)).inpainting == nine
    pipe = minisd.load_pipeline(file, config=folder)
    assert pipe.unet.config.in_channels == (9 if nine else 4)


def test_cli_inpaint(model, tmp_path):
    _, folder, _ = model
    picture(40, 30).save(tmp_path / "in.png")
    mask(40, 30).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    files = ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]
    args = ["inpaint", PROMPT, "--weights", str(folder), *files, "--steps", "3", "--height", "48", "--width", "64"]
    args += ["--out", str(out)]
    assert main(args) == 0 and Image.open(out).size == (64, 48)
    assert main([*args[:-2], "--out", str(tmp_path / "x.png"), "--strength", "0"]) == 2
    assert main([*args[:6], "--mask", str(tmp_path / "absent.png"), "--out", str(tmp_path / "y.png")]) == 2
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
