"""Loading checkpoints (minisd/checkpoints.py): the layouts read, and what a file that cannot be used gives.

The weights come from the reference networks of test_clip / test_unet / test_vae, so that a wrong selection or
renaming shows as numbers that differ from the reference's.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from diffusers import UNet2DConditionModel as UNetReference
from safetensors.torch import save_file

import minisd
from minisd.clip import CLIPTextConfig
from minisd.unet import UNetConfig

from .conftest import max_rel_err, perturb_, sd_v1_keys
from .test_clip import SMALL, compare, compvis_state, ids, reference
from .test_clip import TOL as CLIP_TOL
from .test_unet import THREE_LEVELS as UNET_THREE_LEVELS
from .test_unet import TOL as UNET_TOL
from .test_unet import compvis_file, inputs
from .test_unet import pair as unet_pair
from .test_vae import THREE_LEVELS as VAE_THREE_LEVELS
from .test_vae import assert_parity
from .test_vae import pair as vae_pair


@pytest.fixture(scope="module")
def small_hf():
    """A small transformers CLIP text model with perturbed weights (test_clip's SMALL config)."""
    return reference(**SMALL)


# Files that cannot be used ----------------------------------------------------------------------------------


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minisd.load_text_encoder(tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(minisd.CheckpointError, match="not a readable safetensors file"):
        minisd.load_text_encoder(corrupt)
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"foo": torch.zeros(2)}, unrelated)
    with pytest.raises(minisd.CheckpointError, match=r"has no cond_stage_model\.transformer"):
        minisd.load_text_encoder(unrelated)
    with pytest.raises(minisd.CheckpointError, match="neither a diffusers model folder"):
        minisd.load_text_encoder(tmp_path)
    sd2 = tmp_path / "v2-1_768-ema-pruned.safetensors"
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, sd2)
    with pytest.raises(
        minisd.CheckpointError,
        match=r"does not fit the model's config — missing: text_model\.embeddings\.position_embedding",
    ):
        minisd.load_text_encoder(sd2)


def test_wrong_config_names_offending_keys(small_hf, tmp_path):
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in compvis_state(small_hf).items()}, file)
    with pytest.raises(minisd.CheckpointError, match=r"text_encoder: .*wrong shape: text_model\.embeddings"):
        minisd.load_text_encoder(file)  # the SD1.x default config does not fit the small weights


def test_wrong_shapes_name_the_component(tmp_path):
    ref, _ = unet_pair(UNET_THREE_LEVELS)
    file = tmp_path / "model.safetensors"
    compvis_file(ref, file)
    with pytest.raises(minisd.CheckpointError, match=r"unet: .* does not fit the model's config"):
        minisd.load_unet(file)  # SD1.x's default config


def test_missing_keys_are_named(small_hf, tmp_path):
    state = compvis_state(small_hf)
    del state["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, file)
    cfg = CLIPTextConfig.from_dict(small_hf.config.to_dict())
    with pytest.raises(minisd.CheckpointError, match=r"missing: text_model\.final_layer_norm\.weight"):
        minisd.load_text_encoder(file, config=cfg)


# Pickles (.ckpt) ------------------------------------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path):
    file = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Exploit()}, file)
    with pytest.raises(minisd.CheckpointError, match="will not unpickle"):
        minisd.load_text_encoder(file)


def test_lightning_checkpoint_loads(small_hf, tmp_path, monkeypatch):
    """SD's .ckpt releases carry a PyTorch Lightning ModelCheckpoint callback beside the weights: it is read as an
    inert stand-in (Lightning itself is neither needed nor imported)."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:  # what the training code pickled, in its module's name
        def __init__(self):
            self.monitor, self.best_model_score = "val/loss_simple_ema", torch.tensor(0.5)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    file = tmp_path / "sd-v1-4.ckpt"
    torch.save({"state_dict": compvis_state(small_hf), "callbacks": {"ModelCheckpoint": ModelCheckpoint()}}, file)
    monkeypatch.undo()  # Lightning is gone again before loading
    assert "pytorch_lightning" not in sys.modules
    te = minisd.load_text_encoder(file, config=CLIPTextConfig.from_dict(small_hf.config.to_dict()))
    assert compare(small_hf, te, ids())[0] <= CLIP_TOL


# What a single file holds besides the networks' weights -----------------------------------------------------------


@torch.no_grad()
def test_ema_weights_are_selectable(tmp_path):
    ref, _ = unet_pair(UNET_THREE_LEVELS)
    ema_ref = perturb_(UNetReference(**dict(ref.config)), seed=7).eval()
    file = tmp_path / "model.ckpt"
    state = compvis_file(ref, tmp_path / "unused.safetensors", ema=ema_ref)
    torch.save({"state_dict": state, "global_step": 1}, file)
    cfg = UNetConfig.from_dict(dict(ref.config))
    x, t, c = inputs(cfg)
    for ema, expected in ((None, ema_ref), (True, ema_ref), (False, ref)):
        got = minisd.load_unet(file, config=cfg, ema=ema)(x, t, c)
        assert max_rel_err(got, expected(x, t, c).sample) <= UNET_TOL, ema
    plain = tmp_path / "plain.safetensors"
    state = compvis_file(ref, plain)
    # EMA-only releases keep LitEma's bookkeeping (decay, num_updates) without an EMA copy of the UNet.
    save_file(state | {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1)}, plain)
    got = minisd.load_unet(plain, config=cfg)(x, t, c)
    assert max_rel_err(got, ref(x, t, c).sample) <= UNET_TOL
    with pytest.raises(minisd.CheckpointError, match="holds no EMA weights"):
        minisd.load_unet(plain, config=cfg, ema=True)


def test_real_sd1_single_file_layout_loads_strictly(tmp_path):
    """The three networks load from a file with every key and shape of a real SD v1 checkpoint, with the extra
    entries real files carry. The tensors are meta tensors (shapes without data): the layout is what is tested."""
    state = {k: torch.empty(shape, device="meta") for k, shape in sd_v1_keys().items()}
    state |= {"alphas_cumprod": torch.ones(1000), "model_ema.decay": torch.tensor(0.9999)}
    torch.save({"state_dict": state, "global_step": 840000}, tmp_path / "v1-5.ckpt")
    counts = {}
    for load in (minisd.load_text_encoder, minisd.load_unet, minisd.load_vae):
        model = load(tmp_path / "v1-5.ckpt", device="meta")
        counts[type(model).__name__] = sum(p.numel() for p in model.parameters())
    assert counts == {"CLIPTextModel": 123_060_480, "UNet2DConditionModel": 859_520_964, "AutoencoderKL": 83_653_863}


# Diffusers folders written by older versions --------------------------------------------------------------------


@torch.no_grad()
def test_diffusers_folder_and_legacy_attention_names(tmp_path):
    ref, _ = vae_pair(VAE_THREE_LEVELS)
    ref.save_pretrained(tmp_path / "vae")
    assert_parity(ref, minisd.load_vae(tmp_path), 40, 56)
    # diffusers < 0.14 wrote the attention layers as query/key/value/proj_attn
    legacy = {
        k.replace("to_q.", "query.")
        .replace("to_k.", "key.")
        .replace("to_v.", "value.")
        .replace("to_out.0.", "proj_attn."): v
        for k, v in ref.state_dict().items()
    }
    save_file(legacy, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert_parity(ref, minisd.load_vae(tmp_path / "vae"), 40, 56)
