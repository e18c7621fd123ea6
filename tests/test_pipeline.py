"""End to end: minisd's pipelines against diffusers' StableDiffusionPipeline / Img2ImgPipeline, same weights."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import minisd
from minisd.pipeline import StableDiffusion
from minisd.schedulers import SCHEDULER_CLASSES, load_scheduler

from .conftest import max_rel_err
from .tiny_sd import SD15_SCHEDULER_FILE, build_reference, reference_scheduler, save_compvis, save_diffusers

PROMPT, NEGATIVE = "a red circle on a blue square", "blurry, low quality"
TOL = 1e-4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    ref = build_reference()
    folder = save_diffusers(ref, root / "folder")
    return ref, folder, save_compvis(ref, root / "tiny.safetensors")


def eta_for(name: str) -> float:
    return 1.0 if name == "ddim" else 0.0  # DDIM with η = 1 draws noise: seed order matters too


def reference_txt2img(ref, folder, name, output_type, **kw):
    ref.scheduler = reference_scheduler(folder, name)
    args = dict(negative_prompt=NEGATIVE, num_inference_steps=8, guidance_scale=6.0, height=48, width=80)
    args |= kw
    out = ref(
        PROMPT, generator=torch.Generator("cpu").manual_seed(7), output_type=output_type, eta=eta_for(name), **args
    )
    return out.images


def assert_pixels_close(ours: list[Image.Image], theirs: np.ndarray) -> None:
    """Within 1/255 for at least 99.9% of the 8-bit pixel values."""
    mine = np.stack([np.asarray(im) for im in ours]).astype(int)
    expected = (theirs * 255).round().astype(int)
    assert mine.shape == expected.shape
    assert (np.abs(mine - expected) <= 1).mean() >= 0.999


@pytest.mark.parametrize("name", list(minisd.SCHEDULERS))
def test_text_to_image_equals_diffusers(model, name):
    """SD v1.5's scheduler file; diffusers swaps the sampler in with Class.from_config(pipe.scheduler.config)."""
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, scheduler=name, seed=7, height=48, width=80,
        eta=eta_for(name), progress=False,
    )  # fmt: skip
    latents = reference_txt2img(ref, folder, name, "latent")
    assert ours.latents.shape == (1, 4, 24, 40)  # 48×80 pixels, the tiny VAE's factor 2
    assert max_rel_err(ours.latents, latents) <= TOL
    assert_pixels_close(ours.images, reference_txt2img(ref, folder, name, "np"))


@pytest.mark.parametrize("name", list(minisd.SCHEDULERS))
def test_compvis_single_file_equals_diffusers(model, name):
    ref, folder, file = model
    pipe = minisd.load_pipeline(file, config=folder)  # a single file of another shape than SD1.x
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, scheduler=name, seed=7, height=48, width=80,
        eta=eta_for(name), progress=False,
    )  # fmt: skip
    assert max_rel_err(ours.latents, reference_txt2img(ref, folder, name, "latent")) <= TOL
    assert_pixels_close(ours.images, reference_txt2img(ref, folder, name, "np"))


def test_negative_control_other_seed_differs(model):
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, seed=8, height=48, width=80, progress=False
    )
    assert max_rel_err(ours.latents, reference_txt2img(ref, folder, "pndm", "latent")) > TOL


def test_guidance_off_and_batches(model):
    """Guidance ≤ 1 skips the unconditional pass; two prompts × two pictures keep diffusers' order."""
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    prompts = [PROMPT, "a green triangle"]
    ours = pipe.text_to_image(
        prompts, steps=6, guidance_scale=1.0, scheduler="euler_ancestral", seed=7, height=32, width=32,
        num_images=2, trace=True, progress=False,
    )  # fmt: skip
    ref.scheduler = reference_scheduler(folder, "euler_ancestral")
    theirs = ref(
        prompts, num_inference_steps=6, guidance_scale=1.0, height=32, width=32, num_images_per_prompt=2,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent",
    ).images  # fmt: skip
    assert len(ours.images) == 4 and max_rel_err(ours.latents, theirs) <= TOL
    assert all(step.eps_uncond is None for step in ours.trace)


@pytest.mark.parametrize("name", ["ddim", "euler_ancestral", "dpmpp_2m"])
def test_trace_and_callback_equal_diffusers_steps(model, name):
    """Each step's x_t in the trace is the latent diffusers' pipeline holds at that step."""
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    seen = []
    result = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=6, guidance_scale=6.0, scheduler=name, seed=7, height=32, width=48, trace=True,
        eta=eta_for(name), progress=False, on_step=lambda i, t, x, x0: seen.append(t),
    )  # fmt: skip
    assert seen == result.timesteps == [s.t for s in result.trace] and len(seen) == 6
    theirs = []

    def keep(pipe_, i, t, kwargs):
        theirs.append(kwargs["latents"].clone())  # the latents after step i
        return kwargs

    reference_txt2img(
        ref, folder, name, "latent", num_inference_steps=6, height=32, width=48, callback_on_step_end=keep
    )
    for step, after in zip(result.trace[1:], theirs, strict=False):
        assert max_rel_err(step.x_t, after) <= TOL
    assert max_rel_err(result.latents, theirs[-1]) <= TOL
    for step in result.trace:
        assert step.pred_x0.shape == step.x_t.shape == step.eps_cond.shape == step.eps_uncond.shape


def test_default_size_and_seed(model):
    _, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    a = pipe.text_to_image(PROMPT, steps=2, progress=False)
    b = pipe.text_to_image(PROMPT, steps=2, progress=False)
    assert a.images[0].size == (16, 16)  # sample_size 8 × the tiny VAE's factor 2
    assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("name", list(minisd.SCHEDULERS))
def test_image_to_image_equals_diffusers(model, name):
    from diffusers import StableDiffusionImg2ImgPipeline

    ref, folder, _ = model
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (51, 83, 3), dtype=np.uint8))  # odd: resized to 50×82
    pipe = minisd.load_pipeline(folder)
    with pytest.warns(UserWarning, match="resized to 82×50"):
        ours = pipe.image_to_image(
            PROMPT, image, strength=0.6, negative_prompt=NEGATIVE, steps=10, guidance_scale=5.0, scheduler=name,
            seed=11, eta=eta_for(name), progress=False,
        )  # fmt: skip
    img2img = StableDiffusionImg2ImgPipeline(**ref.components)
    img2img.scheduler = reference_scheduler(folder, name)
    kw = dict(strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=5.0, eta=eta_for(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latents = img2img(PROMPT, image, generator=torch.Generator("cpu").manual_seed(11), output_type="latent", **kw)
        pixels = img2img(PROMPT, image, generator=torch.Generator("cpu").manual_seed(11), output_type="np", **kw)
    assert len(ours.timesteps) == 6 + (name == "pndm")  # int(10 × 0.6) of the 10 steps; PLMS repeats its first
    assert max_rel_err(ours.latents, latents.images) <= TOL
    assert_pixels_close(ours.images, pixels.images)


def test_bad_input_errors(model, tmp_path):
    _, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    with pytest.raises(ValueError, match="not a positive multiple of 2"):
        pipe.text_to_image(PROMPT, height=33, progress=False)
    with pytest.raises(ValueError, match="unknown scheduler 'lms'"):
        pipe.text_to_image(PROMPT, scheduler="lms", progress=False)
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        pipe.image_to_image(PROMPT, Image.new("RGB", (32, 32)), strength=1.5)
    with pytest.raises(ValueError, match="leaves no step"):
        pipe.image_to_image(PROMPT, Image.new("RGB", (32, 32)), strength=0.05, steps=10, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minisd.load_pipeline(tmp_path / "nowhere")


def test_shipped_model_missing_is_a_clear_error(monkeypatch, tmp_path):
    import minisd.pipeline

    monkeypatch.setattr(minisd.pipeline, "SHIPPED_MODEL", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="minisd's own small model is not at"):
        minisd.load_pipeline()


def test_load_pipeline_builds_minisds_own_components(model):
    _, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    assert isinstance(pipe, StableDiffusion)
    assert isinstance(pipe.tokenizer, minisd.CLIPTokenizer)
    assert isinstance(pipe.text_encoder, minisd.CLIPTextModel)
    assert isinstance(pipe.unet, minisd.UNet2DConditionModel)
    assert isinstance(pipe.vae, minisd.AutoencoderKL)
    assert type(pipe.scheduler).__name__ == "PNDM"  # as the folder's scheduler_config.json says


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m"])
def test_sd2_shaped_model_equals_diffusers(tmp_path, name):
    """gelu text encoder, "!" padding, linear projections, per-level heads, upcast attention, v-prediction."""
    ref = build_reference(seed=5, sd2=True)
    folder = save_diffusers(ref, tmp_path / "sd2")
    pipe = minisd.load_pipeline(folder)
    assert pipe.tokenizer.pad_id == 0 and pipe.scheduler.config.prediction_type == "v_prediction"
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, scheduler=name, seed=7, height=48, width=80,
        eta=eta_for(name), progress=False,
    )  # fmt: skip
    assert max_rel_err(ours.latents, reference_txt2img(ref, folder, name, "latent")) <= TOL


@pytest.mark.parametrize("name", ["ddim", "euler_ancestral", "dpmpp_2m"])
def test_bfloat16_pipeline_equals_diffusers(model, tmp_path, name):
    """Both in bf16 on the CPU: same weights, same seed, same arithmetic up to bf16 rounding."""
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder, dtype=torch.bfloat16)
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, scheduler=name, seed=7, height=48, width=80,
        eta=eta_for(name), progress=False,
    )  # fmt: skip
    # Copies: Module.to converts in place, and ``ref`` is shared by the module's tests.
    components = {k: copy.deepcopy(v).to(torch.bfloat16) if hasattr(v, "to") else v for k, v in ref.components.items()}
    ref_bf16 = type(ref)(**components)
    latents = reference_txt2img(ref_bf16, folder, name, "latent")
    assert ours.latents.dtype == latents.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa. DDIM and Euler ancestral round exactly as diffusers (0 measured); DPM-Solver++
    # writes its update as the paper's D = x̂0 + (x̂0 − x̂0_prev)/2r, diffusers as two terms: 1.6e-2 measured.
    assert max_rel_err(ours.latents.float(), latents.float()) <= 4e-2
    assert all(np.isfinite(np.asarray(im)).all() for im in ours.images)


def test_model_folder_holds_sd15s_scheduler_file(model):
    """The real case the tests meet: SD v1.5's file has no timestep_spacing, so Euler, Euler ancestral and
    DPM-Solver++ swapped in run their own default, "linspace", and DDPM, DDIM, PNDM "leading"."""
    _, folder, _ = model
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text()) == SD15_SCHEDULER_FILE
    pipe = minisd.load_pipeline(folder)
    for name in minisd.SCHEDULERS:
        ours, theirs = minisd.make_scheduler(name, pipe.scheduler.config), reference_scheduler(folder, name)
        expected = "linspace" if name in ("euler", "euler_ancestral", "dpmpp_2m") else "leading"
        assert ours.config.timestep_spacing == theirs.config.timestep_spacing == expected
        ours.set_timesteps(8)
        theirs.set_timesteps(8)
        assert torch.equal(ours.timesteps.float(), theirs.timesteps.float())


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_negative_control_model_spacing_kept_for_every_sampler(model, name):
    """minisd's earlier reading kept the model's "leading" for every sampler: 4.6e-1 to 5.0e-1 measured."""
    ref, folder, _ = model
    pipe = minisd.load_pipeline(folder)
    pipe.scheduler = minisd.make_scheduler("pndm", {**SD15_SCHEDULER_FILE, "timestep_spacing": "leading"})
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, scheduler=name, seed=7, height=48, width=80, progress=False
    )
    assert max_rel_err(ours.latents, reference_txt2img(ref, folder, name, "latent")) > 0.1


def test_pndm_runge_kutta_pipeline_equals_diffusers(model):
    """PNDM as diffusers' default (skip_prk_steps false): three Runge-Kutta steps of 4 UNet calls, then PLMS."""
    from diffusers import PNDMScheduler

    ref, folder, _ = model
    config = {k: v for k, v in SD15_SCHEDULER_FILE.items() if k != "skip_prk_steps"}
    pipe = minisd.load_pipeline(folder)
    pipe.scheduler = minisd.make_scheduler("pndm", config)
    ours = pipe.text_to_image(
        PROMPT, NEGATIVE, steps=8, guidance_scale=6.0, seed=7, height=48, width=80, progress=False
    )
    ref.scheduler = PNDMScheduler.from_config(config)
    theirs = ref(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=8, guidance_scale=6.0, height=48, width=80,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent",
    ).images  # fmt: skip
    assert len(ours.timesteps) == 12 + 8 - 3
    assert max_rel_err(ours.latents, theirs) <= TOL


@pytest.mark.parametrize("name", list(minisd.SCHEDULERS))
def test_model_folder_scheduler_is_read_as_diffusers_reads_it(tmp_path, name):
    """A scheduler_config.json that leaves entries out: they take the named diffusers class's defaults."""
    class_name = {v: k for k, v in SCHEDULER_CLASSES.items()}[name]
    (tmp_path / "scheduler").mkdir()
    config = {"_class_name": class_name, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    ours = load_scheduler(tmp_path)
    theirs = reference_scheduler(tmp_path, name)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    assert torch.equal(ours.timesteps.float(), theirs.timesteps.float()), (ours.timesteps, theirs.timesteps)
    assert ours.config.clip_sample == theirs.config.get("clip_sample", False)
    assert ours.config.set_alpha_to_one == theirs.config.get("set_alpha_to_one", False)
    assert ours.config.skip_prk_steps == theirs.config.get("skip_prk_steps", True)  # PNDM: False, Runge-Kutta


def test_unknown_scheduler_class_falls_back_with_a_warning(tmp_path):
    """PLMS on the file's schedule; another sampler chosen reads the file as diffusers' from_config would."""
    (tmp_path / "scheduler").mkdir()
    config = {"_class_name": "UniPCMultistepScheduler", "solver_type": "bh2", "beta_schedule": "scaled_linear"}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="'UniPCMultistepScheduler' is not implemented; using PNDM"):
        sched = load_scheduler(tmp_path)
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.skip_prk_steps
    ours, theirs = minisd.make_scheduler("dpmpp_2m", sched.config), reference_scheduler(tmp_path, "dpmpp_2m")
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    assert theirs.config.solver_type == "midpoint"  # UniPC's "bh2", turned into DPM-Solver's midpoint
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
