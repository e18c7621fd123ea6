"""minisd.inspection.describe: what a checkpoint holds, read without building its networks.

The command line's ``minisd inspect`` prints this report; test_cli checks the printing, these the report.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minisd
from minisd.inspection import describe
from minisd.unet import UNet2DConditionModel

from .conftest import sd_v1_keys
from .tiny_sd import build_reference, save_compvis, save_diffusers

NETWORKS = ("text_encoder", "unet", "vae")
SD1_FAMILY = "SD1.x (every key and shape as minisd's SD1.x networks)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random SD (diffusers' networks), as a diffusers folder and as a CompVis single file."""
    root = tmp_path_factory.mktemp("inspection")
    ref = build_reference()
    return ref, save_diffusers(ref, root / "tiny"), save_compvis(ref, root / "tiny.safetensors")


def sizes(ref, name: str) -> tuple[int, int]:
    """(tensors, parameters) of the reference's network ``name``."""
    state = getattr(ref, name).state_dict()
    return len(state), sum(t.numel() for t in state.values())


def test_diffusers_folder(tiny):
    ref, folder, _ = tiny
    report = describe(folder)
    assert report["layout"] == "diffusers folder"
    assert report["family"] == "custom"  # neither SD1.x's nor SD2.x's UNet
    assert report["ema"] is False and report["other"] == []
    assert list(report["components"]) == [*NETWORKS, "tokenizer", "scheduler"]
    for name in NETWORKS:  # against the folder's own configs: everything fits
        c = report["components"][name]
        assert (c["tensors"], c["parameters"]) == sizes(ref, name), name
        assert c["dtypes"] == ["float32"]
        assert c["missing"] == c["unexpected"] == c["wrong_shape"] == [], name
    assert report["components"]["tokenizer"] == {"class": "CLIPTokenizer"}
    assert report["components"]["scheduler"] == {"class": "PNDMScheduler"}


def test_diffusers_folder_names_missing_and_unexpected_keys(tiny, tmp_path):
    _, folder, _ = tiny
    shutil.copytree(folder, tmp_path / "model")
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_in.bias"]
    save_file(state | {"extra.weight": torch.zeros(2)}, weights)
    shutil.rmtree(tmp_path / "model" / "vae")
    report = describe(tmp_path / "model")
    unet = report["components"]["unet"]
    assert unet["missing"] == ["conv_in.bias"] and unet["unexpected"] == ["extra.weight"] and unet["wrong_shape"] == []
    assert report["components"]["vae"] == {"error": f"no weights in {tmp_path / 'model' / 'vae'}"}


def test_compvis_single_file_of_other_shapes(tiny):
    """The small networks read against SD1.x's: what does not fit is named, and the family is not SD1.x."""
    ref, _, file = tiny
    report = describe(file)
    assert report["layout"] == "CompVis single file (.safetensors)"
    assert report["family"] == "custom (pass the matching diffusers folder as config)"
    assert report["ema"] is False and report["other"] == []
    assert list(report["components"]) == list(NETWORKS)
    for name in NETWORKS:
        c = report["components"][name]
        assert (c["tensors"], c["parameters"]) == sizes(ref, name), name
    text_encoder, unet, vae = (report["components"][name] for name in NETWORKS)
    assert "text_model.embeddings.token_embedding.weight" in text_encoder["wrong_shape"]  # width 32, not 768
    assert "text_model.encoder.layers.11.mlp.fc2.weight" in text_encoder["missing"]  # 2 layers, not 12
    assert "conv_in.weight" in unet["wrong_shape"] and "decoder.conv_in.weight" in vae["wrong_shape"]


def test_ema_and_other_tensors(tmp_path):
    """An EMA copy of the UNet is found; tensors of no network are listed as other, LitEma's bookkeeping not."""
    state = {"model_ema.decay": torch.tensor(0.99), "model_ema.num_updates": torch.tensor(1)}
    state |= {f"model_ema.diffusion_modelblock{i}weight": torch.zeros(2) for i in range(3)}
    state |= {"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3), "alphas_cumprod": torch.ones(1000)}
    save_file(state, tmp_path / "f.safetensors")
    report = describe(tmp_path / "f.safetensors")
    assert report["ema"] is True and report["other"] == ["alphas_cumprod"]
    assert list(report["components"]) == ["unet"]
    unet = report["components"]["unet"]
    assert unet["tensors"] == 1 and unet["parameters"] == 4 * 320 * 3 * 3
    assert unet["unexpected"] == unet["wrong_shape"] == []
    with torch.device("meta"):
        expected = UNet2DConditionModel().state_dict()
    assert unet["missing"] == sorted(set(expected) - {"conv_out.weight"})
    assert report["family"] == "custom (pass the matching diffusers folder as config)"


def test_real_sd1_layout(tmp_path):
    """Every key and shape of a real SD v1 file (as meta tensors: 125 kB instead of 4 GB) reads as SD1.x."""
    state = {k: torch.empty(shape, device="meta") for k, shape in sd_v1_keys().items()}
    torch.save(
        {"state_dict": state | {"alphas_cumprod": torch.ones(1000)}, "global_step": 840000}, tmp_path / "v1.ckpt"
    )
    report = describe(tmp_path / "v1.ckpt")
    assert report["layout"] == "CompVis single file (.ckpt)"
    assert report["family"] == SD1_FAMILY
    parameters = {name: c["parameters"] for name, c in report["components"].items()}
    assert parameters == {"text_encoder": 123_060_480, "unet": 859_520_964, "vae": 83_653_863}
    for name, c in report["components"].items():
        assert c["missing"] == c["unexpected"] == c["wrong_shape"] == [], name
    assert report["ema"] is False and report["other"] == ["alphas_cumprod"]


def test_sd2_single_file(tmp_path):
    """An OpenCLIP text encoder (cond_stage_model.model.*) marks SD2.x; a partial one is "custom" (see
    tests/test_sd2_single_file.py for a complete one)."""
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, tmp_path / "v2.safetensors")
    report = describe(tmp_path / "v2.safetensors")
    assert report["family"] == "custom (pass the matching diffusers folder as config)"
    assert list(report["components"]) == ["text_encoder"]
    assert report["components"]["text_encoder"]["wrong_shape"] == ["text_model.embeddings.token_embedding.weight"]
    assert report["other"] == []


def test_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        describe(tmp_path / "absent.safetensors")
    with pytest.raises(minisd.CheckpointError, match=r"without model_index\.json"):
        describe(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(minisd.CheckpointError, match="not a readable safetensors file"):
        describe(tmp_path / "bad.safetensors")
