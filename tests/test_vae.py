"""The VAE against diffusers.AutoencoderKL holding the same perturbed random weights."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL as Reference
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

import minisd
from minisd.checkpoints import vae_to_compvis
from minisd.vae import AutoencoderKL, VAEConfig

from .conftest import max_rel_err, perturb_, sd_v1_keys

TOL = 1e-4  # × max |output|

THREE_LEVELS = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
)
TWO_LEVELS = dict(
    block_out_channels=(16, 48),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=2,
    norm_num_groups=16,
    latent_channels=8,
    scaling_factor=0.5,
)
CONFIGS = {"three_levels": THREE_LEVELS, "two_levels": TWO_LEVELS}


def pair(kw: dict, seed: int = 0) -> tuple[Reference, AutoencoderKL]:
    ref = perturb_(Reference(**kw), seed).eval()
    ours = AutoencoderKL(VAEConfig.from_dict(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def images(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def assert_parity(ref: Reference, ours: AutoencoderKL, h: int, w: int) -> None:
    x = images(h, w)
    theirs, mine = ref.encode(x).latent_dist, ours.encode(x)
    assert max_rel_err(mine.mean, theirs.mean) <= TOL
    assert max_rel_err(mine.logvar, theirs.logvar) <= TOL
    z = torch.randn(mine.mean.shape, generator=torch.Generator().manual_seed(2))
    assert max_rel_err(ours.decode(z), ref.decode(z).sample) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", [(40, 56), (32, 32)])
def test_small_configs_parity(name, size):
    ref, ours = pair(CONFIGS[name])
    assert_parity(ref, ours, *size)


@pytest.mark.slow
def test_full_sd1_parity():
    ref, ours = pair(sd1_reference_config(), seed=3)
    assert ours.config == VAEConfig()
    assert_parity(ref, ours, 64, 64)


def sd1_reference_config() -> dict:
    return dict(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=512,
    )


@torch.no_grad()
def test_negative_control_symmetric_padding():
    """Symmetric padding in the down-sampling (a common slip) must be caught by the tolerance."""
    ref, ours = pair(THREE_LEVELS)
    for block in ours.encoder.down_blocks[:-1]:
        conv = block.downsamplers[0].conv
        conv.padding = (1, 1)
        block.downsamplers[0].forward = conv.forward  # no asymmetric F.pad
    x = images(40, 56)
    assert max_rel_err(ours.encode(x).mean, ref.encode(x).latent_dist.mean) > TOL


@torch.no_grad()
def test_sampling_equals_diffusers():
    ref, ours = pair(THREE_LEVELS)
    x = images(40, 56)
    for seed in (0, 1234):
        mine = ours.encode(x).sample(torch.Generator().manual_seed(seed))
        theirs = ref.encode(x).latent_dist.sample(torch.Generator().manual_seed(seed))
        assert max_rel_err(mine, theirs) <= TOL
    assert torch.equal(ours.encode(x).mode(), ours.encode(x).mean)


# Which modules may use the scaling factor, and how: "name" (scaling_factor as a name, attribute, argument or
# string, e.g. a config key) and "literal" (SD1.x's value, 0.18215). Docstrings and comments are free to.
SCALING_ALLOWED = {
    "vae.py": {"name", "literal"},  # the config field and its SD1.x default; scale_latents / unscale_latents
    "train.py": {"name"},  # measures it, trains the UNet on latents × it, writes it into the exported config
}


NAME_FIELDS = {ast.Name: "id", ast.Attribute: "attr", ast.arg: "arg", ast.keyword: "arg", ast.FunctionDef: "name"}


def scaling_factor_uses(source: str) -> list[tuple[int, str]]:
    """(line, "name" or "literal") of every use of the VAE's scaling factor in the code of ``source``."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    uses = []
    for node in ast.walk(tree):
        name = getattr(node, NAME_FIELDS.get(type(node), ""), None)
        value = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
        if name == "scaling_factor" or (isinstance(value, str) and "scaling_factor" in value):
            uses.append((node.lineno, "name"))
        elif isinstance(value, float) and value == 0.18215:
            uses.append((node.lineno, "literal"))
    return sorted(uses)


def test_only_the_vae_applies_the_scaling_factor():
    """The UNet works on the VAE's latents × scaling_factor: AutoencoderKL.scale_latents / unscale_latents apply
    it, and no other module of minisd (the pipelines, the samplers, the command line) may multiply or divide by
    it, nor read it from a config, nor hard-code SD1.x's value; only training measures and writes it."""
    package = Path(minisd.__file__).parent
    found = {}
    for file in sorted(package.rglob("*.py")):
        module = file.relative_to(package).as_posix()
        uses = [u for u in scaling_factor_uses(file.read_text()) if u[1] not in SCALING_ALLOWED.get(module, set())]
        if uses:
            found[module] = uses
    assert found == {}
    assert [kind for _, kind in scaling_factor_uses((package / "vae.py").read_text())].count("literal") == 1
    assert VAEConfig().scaling_factor == 0.18215
    # Negative control: what the scan catches, and that docstrings and comments are not code.
    pipeline_scaling_itself = '''
def decode(self, latents):
    """Decode latents / scaling_factor (0.18215 for SD1.x)."""
    latents = latents / self.vae.config.scaling_factor  # not self.vae.unscale_latents: scaling_factor
    return self.vae.decode(latents * 0.18215, **{"scaling_factor": 1})
'''
    assert scaling_factor_uses(pipeline_scaling_itself) == [(4, "name"), (5, "literal"), (5, "name")]


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_compvis_layout_through_diffusers_converter(name, tmp_path):
    ref, _ = pair(CONFIGS[name])
    cfg = VAEConfig.from_dict(dict(ref.config))
    state = vae_to_compvis(ref.state_dict(), cfg)
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1×1 convs, as CompVis stores them
    converted = convert_ldm_vae_checkpoint(state, dict(ref.config))
    expected = ref.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()} | {"model_ema.decay": torch.tensor(0.9999)}, file)
    assert_parity(ref, minisd.load_vae(file, config=cfg), 40, 56)


def test_full_sd1_keys_match_real_checkpoint():
    with torch.device("meta"):
        ours = AutoencoderKL().state_dict()
        theirs = Reference(**sd1_reference_config()).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    compvis = {k: list(v.shape) for k, v in vae_to_compvis(ours, VAEConfig()).items()}
    real = {k: v for k, v in sd_v1_keys().items() if k.startswith("first_stage_model.")}
    assert compvis == real


def overflowing(kw: dict) -> AutoencoderKL:
    """A VAE whose decoder's last ResNet writes values beyond fp16's ±65504, as SD's real decoder does."""
    _, ours = pair(kw)
    with torch.no_grad():
        ours.decoder.up_blocks[-1].resnets[-1].conv2.weight.mul_(3e4)
    return ours


@torch.no_grad()
def test_fp16_decode_upcasts_and_stays_finite():
    ours = overflowing(THREE_LEVELS)
    z = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(3))
    reference = ours.decode(z)  # fp32
    half = ours.half()
    out = half.decode(z.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert max_rel_err(out.float(), reference) <= 1e-2
    assert half.dtype == torch.float16  # decode gave the weights back in fp16
    half.config.force_upcast = False  # negative control: without the upcast fp16 overflows
    assert not torch.isfinite(half.decode(z.half())).all()


@torch.no_grad()
def test_bf16_decode_stays_finite():
    ours = overflowing(THREE_LEVELS)
    z = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(3))
    reference = ours.decode(z)
    out = ours.to(torch.bfloat16).decode(z)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert max_rel_err(out.float(), reference) <= 5e-2


def test_bad_config_is_an_error():
    with pytest.raises(minisd.CheckpointError, match=r"shift_factor=0\.1159"):
        VAEConfig.from_dict({**THREE_LEVELS, "shift_factor": 0.1159})  # SD3's VAE, not SD1/2's
    with pytest.raises(ValueError, match="DownEncoderBlock2D"):
        VAEConfig.from_dict({**THREE_LEVELS, "down_block_types": ["Foo"] * 3})
