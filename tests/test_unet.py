"""The UNet against diffusers.UNet2DConditionModel holding the same perturbed random weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel as Reference
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import save_file

import minisd
from minisd.attention import manual_attention
from minisd.checkpoints import unet_to_compvis
from minisd.unet import UNet2DConditionModel, UNetConfig

from .conftest import max_rel_err, perturb_, sd_v1_keys

TOL = 1e-4  # × max |output|

# Three levels, conv projections, one head count for all levels (SD1-like).
THREE_LEVELS = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=48,
    attention_head_dim=4,
    norm_num_groups=8,
    sample_size=8,
)
# Linear projections, per-level head counts, upcast attention (SD2-like), attention at every level.
SD2_LIKE = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=40,
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=16,
    sample_size=8,
)
# Four levels with two transformer layers per block and 9 input channels (as inpainting checkpoints have).
DEEP = dict(
    in_channels=9,
    block_out_channels=(16, 32, 32, 32),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=1,
    cross_attention_dim=24,
    attention_head_dim=2,
    transformer_layers_per_block=2,
    norm_num_groups=8,
    sample_size=8,
)
CONFIGS = {"three_levels": THREE_LEVELS, "sd2_like": SD2_LIKE, "deep": DEEP}


def pair(kw: dict, seed: int = 0) -> tuple[Reference, UNet2DConditionModel]:
    ref = perturb_(Reference(**kw), seed).eval()
    ours = UNet2DConditionModel(UNetConfig.from_dict(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def inputs(cfg, h: int = 12, w: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, h, w, generator=g)
    context = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    return x, torch.tensor([17, 901]), context


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_small_configs_parity(name):
    ref, ours = pair(CONFIGS[name])
    for h, w in [(12, 20), (8, 8), (7, 5)]:  # 7×5: not divisible by the down-samplings at all
        x, t, c = inputs(ours.config, h, w)
        expected = ref(x, t, c).sample
        got = ours(x, t, c)
        assert got.shape == expected.shape
        assert max_rel_err(got, expected) <= TOL, (name, h, w)


@torch.no_grad()
def test_scalar_timestep_broadcasts():
    ref, ours = pair(THREE_LEVELS)
    x, _, c = inputs(ours.config)
    assert max_rel_err(ours(x, 500, c), ref(x, 500, c).sample) <= TOL
    assert max_rel_err(ours(x, torch.tensor(500), c), ref(x, 500, c).sample) <= TOL


@torch.no_grad()
def test_negative_control_sin_cos_order():
    """The timestep features in the wrong order (sin first) must be caught by the tolerance."""
    ref, _ = pair(THREE_LEVELS)
    wrong = UNet2DConditionModel(UNetConfig.from_dict({**dict(ref.config), "flip_sin_to_cos": False})).eval()
    wrong.load_state_dict(ref.state_dict())
    x, t, c = inputs(wrong.config)
    assert max_rel_err(wrong(x, t, c), ref(x, t, c).sample) > TOL


BLOCKS = [
    "time_embedding",
    "down_blocks.0.resnets.0",
    "down_blocks.0.attentions.1",
    "down_blocks.1.downsamplers.0",
    "mid_block.attentions.0",
    "up_blocks.1.resnets.2",
    "up_blocks.2.attentions.0.transformer_blocks.0",
    "up_blocks.0.upsamplers.0",
    "down_blocks.0",
    "down_blocks.1",
    "down_blocks.2",
    "mid_block",
    "up_blocks.0",
    "up_blocks.1",
    "up_blocks.2",
]


@torch.no_grad()
def test_per_block_parity_with_hooks():
    """Compare the output of each block by name, so that a wrong epsilon points at its block."""
    ref, ours = pair(THREE_LEVELS)
    seen: dict[str, dict[str, torch.Tensor]] = {"ref": {}, "ours": {}}

    def hook(side, name):
        def keep(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            seen[side][name] = out.sample if hasattr(out, "sample") else out

        return keep

    for side, model in (("ref", ref), ("ours", ours)):
        modules = dict(model.named_modules())
        for name in BLOCKS:
            modules[name].register_forward_hook(hook(side, name))
    x, t, c = inputs(ours.config)
    ref(x, t, c)
    ours(x, t, c)
    for name in BLOCKS:
        assert max_rel_err(seen["ours"][name], seen["ref"][name]) <= TOL, name


@torch.no_grad()
def test_attention_paths_agree_and_maps_are_distributions():
    _, ours = pair(THREE_LEVELS)
    x, t, c = inputs(ours.config)
    fused = ours(x, t, c)
    with manual_attention():
        manual = ours(x, t, c)
    assert max_rel_err(manual, fused) <= TOL
    ours.keep_attention_maps()
    kept = ours(x, t, c)
    assert max_rel_err(kept, fused) <= TOL
    maps = ours.attention_maps()
    assert "down_blocks.0.attentions.0.transformer_blocks.0" in maps
    first = maps["down_blocks.0.attentions.0.transformer_blocks.0"]
    assert first.shape == (2, 4, 12 * 20, 77)  # (B, heads, HW, tokens)
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))
    ours.keep_attention_maps(False)


def compvis_file(ref: Reference, path, ema: Reference | None = None):
    """A CompVis single file of ``ref``'s weights, with ``ema``'s as the EMA copy if given."""
    cfg = UNetConfig.from_dict(dict(ref.config))
    state = unet_to_compvis(ref.state_dict(), cfg)
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # what real files carry besides the networks
    if ema is not None:
        for key, value in unet_to_compvis(ema.state_dict(), cfg).items():
            state["model_ema." + key[len("model.") :].replace(".", "")] = value
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return state


@pytest.mark.parametrize("name", ["three_levels", "sd2_like"])
@torch.no_grad()
def test_compvis_layout_through_diffusers_converter(name, tmp_path):
    ref, _ = pair(CONFIGS[name])
    file = tmp_path / "model.safetensors"
    state = compvis_file(ref, file)
    converted = convert_ldm_unet_checkpoint(state, dict(ref.config))
    expected = ref.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    loaded = minisd.load_unet(file, config=UNetConfig.from_dict(dict(ref.config)))
    x, t, c = inputs(loaded.config)
    assert max_rel_err(loaded(x, t, c), ref(x, t, c).sample) <= TOL


@torch.no_grad()
def test_diffusers_folder_loads(tmp_path):
    ref, _ = pair(SD2_LIKE)
    ref.save_pretrained(tmp_path / "unet")
    for path in (tmp_path, tmp_path / "unet"):
        ours = minisd.load_unet(path)
        x, t, c = inputs(ours.config)
        assert max_rel_err(ours(x, t, c), ref(x, t, c).sample) <= TOL
    # A folder holding only the half-precision variant (diffusion_pytorch_model.fp16.safetensors) loads too.
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() for k, v in ref.state_dict().items()}, weights.with_suffix(".fp16.safetensors"))
    weights.unlink()
    ours = minisd.load_unet(tmp_path)
    assert ours.dtype == torch.float32 and max_rel_err(ours(x, t, c), ref(x, t, c).sample) <= 1e-2


def test_full_sd1_keys_match_real_checkpoint():
    with torch.device("meta"):
        ours = UNet2DConditionModel().state_dict()
        theirs = Reference(**sd1_reference_config()).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    compvis = {k: list(v.shape) for k, v in unet_to_compvis(ours, UNetConfig()).items()}
    real = {k: v for k, v in sd_v1_keys().items() if k.startswith("model.diffusion_model.")}
    assert compvis == real


def sd1_reference_config() -> dict:
    return dict(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


@pytest.mark.slow
@torch.no_grad()
def test_full_sd1_parity():
    ref, ours = pair(sd1_reference_config(), seed=3)
    assert UNetConfig.from_dict(dict(ref.config)) == UNetConfig()
    x, t, c = inputs(ours.config, 16, 16)
    assert max_rel_err(ours(x, t, c), ref(x, t, c).sample) <= TOL


def test_unsupported_config_is_an_error():
    with pytest.raises(minisd.CheckpointError, match=r"class_embed_type='timestep'"):
        UNetConfig.from_dict({**THREE_LEVELS, "class_embed_type": "timestep"})
    with pytest.raises(minisd.CheckpointError, match="unknown entry 'fancy_new_option'"):
        UNetConfig.from_dict({**THREE_LEVELS, "fancy_new_option": 1})
    with pytest.raises(ValueError, match="not one of SD's UNet blocks"):
        UNetConfig.from_dict({**THREE_LEVELS, "down_block_types": ["SimpleDownBlock2D"] * 3})
    # What diffusers writes for SD's own configs is all accepted (its defaults included):
    UNetConfig.from_dict(dict(Reference(**THREE_LEVELS).config))
