"""minisd-tiny, the model minisd ships: diffusers reads it as it is, and the demo draws what it is asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import minisd
from minisd import shapes
from minisd.config import CheckpointError, GenerationDefaults
from minisd.demo import CAPTIONS, run_demo
from minisd.pipeline import SHIPPED_MODEL
from minisd.train import SHIPPED_GUIDANCE

from .conftest import max_rel_err


def test_the_cold_path_imports_no_compiler():
    """Loading and one step import neither torch._dynamo (a second of every cold start: ``normal_`` on the meta
    device pulls it in, see clip.embedding) nor the references."""
    code = (
        "import sys, minisd; minisd.load_pipeline().text_to_image('a red circle', steps=1, progress=False); "
        "print(sorted(m for m in ('torch._dynamo', 'diffusers', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_it_is_found_and_small():
    assert minisd.load_pipeline().unet.config.sample_size == 16
    assert SHIPPED_MODEL.is_dir()
    size = sum(f.stat().st_size for f in SHIPPED_MODEL.rglob("*") if f.is_file())
    assert size <= 40e6, f"{size / 1e6:.1f} MB"


def test_diffusers_loads_every_component_without_missing_or_unexpected_keys():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder")):
            _, info = cls.from_pretrained(SHIPPED_MODEL, subfolder=sub, output_loading_info=True)
            assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (sub, info)


def test_diffusers_pipeline_gives_the_same_latents():
    from diffusers import StableDiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = StableDiffusionPipeline.from_pretrained(SHIPPED_MODEL, safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    prompt = "a green circle above a purple square"
    pipe = minisd.load_pipeline()
    guidance = pipe.defaults.guidance_scale  # the model's own (generation_defaults.json), which diffusers does not read
    generator = torch.Generator().manual_seed(5)
    theirs = reference(
        prompt, num_inference_steps=12, guidance_scale=guidance, generator=generator, output_type="latent"
    )
    ours = pipe.text_to_image(prompt, steps=12, seed=5, progress=False)
    assert max_rel_err(ours.latents, theirs.images) <= 1e-4


def test_the_models_folder_sets_the_default_guidance_and_a_given_scale_overrides_it(tmp_path):
    """generation_defaults.json says what guidance_scale=None means; without it, SD's 7.5; a bad entry is refused."""
    pipe = minisd.load_pipeline()
    assert pipe.defaults.guidance_scale == SHIPPED_GUIDANCE != 7.5
    run = dict(steps=2, progress=False)
    default = pipe.text_to_image("a red circle", **run).latents
    torch.testing.assert_close(
        default, pipe.text_to_image("a red circle", guidance_scale=SHIPPED_GUIDANCE, **run).latents
    )
    assert not torch.allclose(default, pipe.text_to_image("a red circle", guidance_scale=7.5, **run).latents)
    folder = shutil.copytree(SHIPPED_MODEL, tmp_path / "model")
    (folder / GenerationDefaults.FILE).unlink()
    assert minisd.load_pipeline(folder).defaults.guidance_scale == 7.5
    (folder / GenerationDefaults.FILE).write_text('{"guidance": 3}')
    with pytest.raises(CheckpointError, match="unknown entry 'guidance'"):
        minisd.load_pipeline(folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(list(CAPTIONS), out)


def test_demo_writes_its_pictures(demo):
    out, paths = demo
    assert sorted(p.name for p in paths) == ["demo.png", "trace.png"]
    grid = Image.open(out / "demo.png")
    assert grid.width == 160 * len(CAPTIONS)


# What each demo caption says: the (colour, shape) it names, in order, its position word, its relation word.
DEMO_SCENES = {
    "a red circle on the left": ([("red", "circle")], "on the left", None),
    "a small blue square at the top": ([("blue", "square")], "at the top", None),
    "a large yellow triangle in the center": ([("yellow", "triangle")], "in the center", None),
    "a green circle above a purple square": ([("green", "circle"), ("purple", "square")], None, "above"),
}


def test_demo_pictures_show_what_their_captions_say():
    """The demo's captions with the pipeline's defaults and seed 0, read back by the shapes analyser: every
    colour, shape, position and relation a caption names is drawn (``shapes.check``, as the evaluation does)."""
    assert set(DEMO_SCENES) == set(CAPTIONS)
    pipe = minisd.load_pipeline()
    for caption, (named, position, relation) in DEMO_SCENES.items():
        found = shapes.analyse(np.asarray(pipe.text_to_image(caption, progress=False).images[0]))
        scene = shapes.Scene(caption, [shapes.Shape(c, s, 0, 0, 0) for c, s in named], 0, position, relation)
        assert all(shapes.check(scene, found).values()), (caption, found)
