"""The CLIP text encoder against transformers.CLIPTextModel holding the same perturbed random weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig as HFConfig
from transformers import CLIPTextModel as HFModel

import minisd
from minisd.clip import CLIPTextConfig, CLIPTextModel

from .conftest import perturb_, sd_v1_keys

SMALL = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77
)
# The SD1.x text tower, OpenAI CLIP ViT-L/14 (transformers' own defaults are the smaller ViT-B/32).
SD1 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
TOL = 1e-5


def reference(hidden_act: str = "quick_gelu", seed: int = 0, **kw) -> HFModel:
    return perturb_(HFModel(HFConfig(hidden_act=hidden_act, **kw)), seed).eval()


def public_state(hf: HFModel) -> dict[str, torch.Tensor]:
    """The weights as the public SD folders store them (transformers < 5 wrote a text_model. prefix)."""
    return {"text_model." + k: v for k, v in hf.state_dict().items()}


def ours_from(hf: HFModel, **overrides) -> CLIPTextModel:
    cfg = CLIPTextConfig.from_dict({**hf.config.to_dict(), **overrides})
    model = CLIPTextModel(cfg).eval()
    model.load_state_dict(public_state(hf), strict=True)
    return model


def ids(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 49408, (batch, 77), generator=g)


@torch.no_grad()
def compare(hf: HFModel, ours: CLIPTextModel, tokens: torch.Tensor) -> tuple[float, float]:
    out = hf(tokens, output_hidden_states=True)
    last = (ours(tokens) - out.last_hidden_state).abs().max().item()
    skip = (ours(tokens, layer=-2) - hf.final_layer_norm(out.hidden_states[-2])).abs().max().item()
    return last, skip


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_small_config_parity(hidden_act):
    hf = reference(hidden_act, **SMALL)
    last, skip = compare(hf, ours_from(hf), ids())
    assert last <= TOL and skip <= TOL


def test_negative_control_wrong_activation():
    """gelu in place of quick_gelu must be caught by the tolerance."""
    hf = reference("quick_gelu", **SMALL)
    last, _ = compare(hf, ours_from(hf, hidden_act="gelu"), ids())
    assert last > TOL


@pytest.mark.slow
def test_full_sd1_config_parity():
    hf = reference(**SD1)
    assert CLIPTextConfig() == CLIPTextConfig.from_dict(hf.config.to_dict())
    last, skip = compare(hf, ours_from(hf), ids(batch=2))
    assert last <= TOL and skip <= TOL


def test_full_sd1_keys_and_shapes_equal_transformers():
    with torch.device("meta"):
        ours = CLIPTextModel().state_dict()
        theirs = HFModel(HFConfig(**SD1)).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        "text_model." + k: tuple(v.shape) for k, v in theirs.items()
    }


def test_full_sd1_keys_match_real_compvis_checkpoint():
    """The real SD v1 file's cond_stage_model.* keys map onto exactly our keys and shapes."""
    from minisd.checkpoints import text_encoder_from_compvis

    prefix = "cond_stage_model.transformer."
    real = {k[len(prefix) :]: torch.empty(0) for k in sd_v1_keys() if k.startswith(prefix)}
    mapped = text_encoder_from_compvis(real, CLIPTextConfig())
    shapes = {k[len(prefix) :]: tuple(v) for k, v in sd_v1_keys().items() if k.startswith(prefix)}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in CLIPTextModel().state_dict().items()}
    assert set(mapped) == set(ours)
    renamed = {"text_model." + k if not k.startswith("text_model.") else k: s for k, s in shapes.items()}
    assert all(renamed[k] == s for k, s in ours.items())


@pytest.fixture(scope="module")
def small_hf():
    return reference(**SMALL)


def write_diffusers_folder(hf: HFModel, root, public_prefix: bool):
    folder = root / "text_encoder"
    hf.save_pretrained(folder)  # config.json + model.safetensors (bare keys, transformers 5)
    if public_prefix:  # rewrite as the public SD folders have it, with a float position_ids buffer too
        state = public_state(hf) | {"text_model.embeddings.position_ids": torch.arange(77.0)[None]}
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return root


@pytest.mark.parametrize("public_prefix", [True, False])
def test_load_diffusers_folder(small_hf, tmp_path, public_prefix):
    root = write_diffusers_folder(small_hf, tmp_path, public_prefix)
    for path in (root, root / "text_encoder"):
        te = minisd.load_text_encoder(path)
        last, _ = compare(small_hf, te, ids())
        assert last <= TOL


def compvis_state(hf: HFModel) -> dict[str, torch.Tensor]:
    state = {"cond_stage_model.transformer." + k: v for k, v in public_state(hf).items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # other networks: ignored
    state["alphas_cumprod"] = torch.ones(1000)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_compvis_single_file(small_hf, tmp_path, suffix):
    state = compvis_state(small_hf)
    file = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, file)
    else:
        torch.save({"state_dict": state, "global_step": 470000}, file)
    te = minisd.load_text_encoder(file, config=CLIPTextConfig.from_dict(small_hf.config.to_dict()))
    last, _ = compare(small_hf, te, ids())
    assert last <= TOL


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        CLIPTextConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="layer -13 does not exist"):
        CLIPTextModel(CLIPTextConfig(**SMALL))(ids(), layer=-13)


def test_import_does_not_pull_in_the_references():
    code = "import sys, minisd; bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
