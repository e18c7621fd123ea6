"""SD 2.x single files: OpenCLIP's text tower mapped, the variant told from shapes, parity with diffusers."""

from __future__ import annotations

import warnings

import pytest
import torch

import minisd
from minisd.checkpoints import OPENCLIP_PREFIX, check_keys, text_encoder_from_openclip, text_encoder_to_openclip
from minisd.clip import CLIPTextModel
from minisd.inspection import describe
from minisd.unet import UNet2DConditionModel
from minisd.variants import SD2_TEXT, SD2_UNET, configs_for, detect

from .conftest import max_rel_err
from .tiny_sd import build_reference, reference_scheduler, save_compvis_sd2, save_diffusers

PROMPT = "a red circle on a blue square"


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd2")
    ref = build_reference(sd2=True)
    folder = save_diffusers(ref, root / "folder")
    return ref, folder, save_compvis_sd2(ref, root / "sd2")


def test_openclip_file_converts_through_diffusers_to_the_same_weights(sd2):
    """diffusers' own converter reads the file minisd writes as exactly the text encoder it came from."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    ref, _, file = sd2
    checkpoint = load_file(file)
    converted = convert_open_clip_checkpoint(ref.text_encoder, checkpoint)
    original = {k.removeprefix("text_model."): v for k, v in ref.text_encoder.state_dict().items()}
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    # diffusers drops the unused last layer by its name in the real 24-layer files (resblocks.23); here the
    # small file's extra layer has another index, so only the layers the model has are compared.
    assert set(original) - {"embeddings.position_ids"} <= set(converted)
    for key in set(original) - {"embeddings.position_ids"}:
        assert torch.equal(converted[key], original[key]), key


def test_openclip_rules_round_trip(sd2):
    ref = sd2[0]
    state = {k.removeprefix("text_model."): v for k, v in ref.text_encoder.state_dict().items()}
    back = text_encoder_from_openclip(text_encoder_to_openclip(state), ref.text_encoder.config)
    assert {k.removeprefix("text_model.") for k in back} == set(state) - {"embeddings.position_ids"}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_sd2_single_file_equals_diffusers(sd2, prediction, scheduler):
    ref, folder, file = sd2
    ref.scheduler = reference_scheduler(folder, scheduler)
    ref.scheduler.register_to_config(prediction_type=prediction)
    ref.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    theirs = ref(PROMPT, num_inference_steps=6, guidance_scale=6.0, generator=torch.Generator().manual_seed(2),
                 output_type="latent").images  # fmt: skip
    pipe = minisd.load_pipeline(file, config=folder, prediction_type=prediction)
    ours = pipe.text_to_image(PROMPT, steps=6, guidance_scale=6.0, seed=2, scheduler=scheduler, progress=False)
    assert max_rel_err(ours.latents, theirs) <= 1e-4


def test_sd2_text_encoder_equals_transformers_penultimate_layer(sd2):
    """SD 2.x reads OpenCLIP's penultimate layer through the final LayerNorm: the file's last layer is unused."""
    ref, folder, file = sd2
    ours = minisd.load_text_encoder(file, minisd.CLIPTextConfig.from_json(folder / "text_encoder" / "config.json"))
    ids = minisd.load_tokenizer(folder)(["a red circle", ""])
    assert ids[1, -1] == 0  # padded with "!", as SD 2.x
    theirs = ref.text_encoder(ids).last_hidden_state
    assert max_rel_err(ours(ids), theirs) <= 1e-5


def test_real_sd2_layout_fits_the_default_sd2_configs():
    """A file with real SD 2.x's keys and shapes (ViT-H/14 with its 24 layers, the SD 2.x UNet) fits the
    configs minisd assumes for it, key for key (built on the meta device: no weights)."""
    from diffusers import UNet2DConditionModel as DiffusersUNet
    from transformers import CLIPTextConfig
    from transformers import CLIPTextModel as HFText

    from minisd.checkpoints import unet_to_compvis

    with torch.device("meta"):
        hf = HFText(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, hidden_act="gelu"))  # fmt: skip
        unet = DiffusersUNet(sample_size=96, **SD2_UNET)
        ours_text, ours_unet = CLIPTextModel(SD2_TEXT), UNet2DConditionModel(minisd.UNetConfig(**SD2_UNET))
    openclip = text_encoder_to_openclip({k.removeprefix("text_model."): v for k, v in hf.state_dict().items()})
    assert "transformer.resblocks.23.attn.in_proj_weight" in openclip
    assert tuple(openclip["transformer.resblocks.0.attn.in_proj_weight"].shape) == (3072, 1024)
    specs = {OPENCLIP_PREFIX + k: v for k, v in openclip.items()}
    specs |= unet_to_compvis(unet.state_dict(), minisd.UNetConfig(**SD2_UNET))
    assert str(detect(specs)) == "SD2.x"
    check_keys("text_encoder", "SD2.x", ours_text, text_encoder_from_openclip(openclip, SD2_TEXT))
    check_keys("unet", "SD2.x", ours_unet, {k: v for k, v in unet.state_dict().items()})


def test_variant_and_prediction_type_from_the_file(sd2, tmp_path):
    ref, _, file = sd2
    with pytest.warns(UserWarning, match="assuming v-prediction"):
        variant, configs = configs_for(file)
    assert str(variant) == "SD2.x" and configs.scheduler[0] == "ddim" and configs.pad_id == 0
    base = file.rename(file.with_name("sd2-base.safetensors"))
    assert configs_for(base)[1].scheduler == ("pndm", None)  # "base" in the name: ε
    ckpt = save_compvis_sd2(ref, tmp_path / "v2", suffix=".ckpt")  # global_step 875 000: SD 2.0-base
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert configs_for(ckpt)[1].scheduler == ("pndm", None)
    assert configs_for(base, "v_prediction")[1].scheduler[0] == "ddim"
    with pytest.raises(ValueError, match="prediction_type must be"):
        configs_for(base, "sample")
    base.rename(file)


def test_inspect_names_the_variant(sd2):
    report = describe(sd2[2])
    assert report["variant"] == "SD2.x"  # a small one: its shapes are not SD2.x's, so the family is "custom"
    assert report["family"] == "custom (pass the matching diffusers folder as config)"
