"""The low-memory options and torch.compile: each a flag, each checked against the plain pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from minisd import load_pipeline, shapes
from minisd.checkpoints import read_weights
from minisd.cli import main

from .conftest import max_rel_err
from .tiny_sd import build_reference, save_diffusers

PROMPT = "a red circle on a blue square"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_diffusers(build_reference(), tmp_path_factory.mktemp("lowmem") / "folder")


def generate(pipe, **kw):
    return pipe.text_to_image(PROMPT, steps=4, guidance_scale=5.0, seed=1, height=48, width=64, progress=False, **kw)


def test_attention_chunks_give_the_same_result(folder):
    plain = generate(load_pipeline(folder))
    chunked = load_pipeline(folder).set_low_memory(attention_chunk=7)  # 24×32 = 768 queries, 7 at a time
    # Float rounding only: a chunk of 7 queries takes other matmul blocking than all 768 (1.2e-6 seen on an
    # AMD CPU without AMX); a chunking bug would be off by orders of magnitude more.
    assert max_rel_err(generate(chunked).latents, plain.latents) <= 1e-5


def test_drop_text_encoder_frees_it_after_one_generation(folder):
    pipe = load_pipeline(folder).set_low_memory(drop_text_encoder=True)
    assert max_rel_err(generate(pipe).latents, generate(load_pipeline(folder)).latents) == 0
    assert pipe.text_encoder is None
    with pytest.raises(ValueError, match="the text encoder was freed after its first use"):
        generate(pipe)


def test_tiled_vae_decoding_equals_the_whole_decode():
    """Each tile read with the decoder's reach around it, every GroupNorm with the whole picture's statistics:
    the same picture as ``decode``, tile boundaries included. With a smaller margin the seams show."""
    vae = load_pipeline().vae
    x, _ = shapes.batch(3, 4)
    mosaic = torch.cat([torch.cat([x[0], x[1]], 2), torch.cat([x[2], x[3]], 2)], 1)[None]  # (1, 3, 128, 128)
    with torch.no_grad():
        z = vae.encode(mosaic).mean  # (1, 4, 32, 32)
        full = vae.decode(z)
        assert torch.equal(vae.decode_tiled(z, tile=32), full)  # one tile: decode itself
        for tile in (8, 12):  # 16 tiles, 9 tiles of unequal sizes
            assert max_rel_err(vae.decode_tiled(z, tile=tile), full) <= 1e-5, tile
        short = vae.decode_tiled(z, tile=8, overlap=vae.decoder.reach() // 2)
    assert max_rel_err(short, full) > 1e-3
    with pytest.raises(ValueError, match="use tile ≥ 1"):
        vae.decode_tiled(z, tile=0)


def test_the_tiled_decode_option_gives_the_same_picture(folder):
    """``vae_tile`` through the pipeline, and on an fp16 VAE (decoded in fp32, as ``decode`` does)."""
    plain = generate(load_pipeline(folder))
    tiled = generate(load_pipeline(folder).set_low_memory(vae_tile=2))  # a (24, 32) latent: 12 × 16 tiles
    assert np.abs(np.asarray(tiled.images[0], int) - np.asarray(plain.images[0], int)).max() <= 1
    vae = load_pipeline(folder).vae.half()
    z = plain.latents[..., :8, :8].half()
    with torch.no_grad():
        assert max_rel_err(vae.decode_tiled(z, tile=4).float(), vae.decode(z).float()) <= 1e-3


def test_memory_estimate_uses_the_tile(folder):
    pipe = load_pipeline(folder)
    with pytest.raises(ValueError, match="GiB of memory"):
        pipe.check_memory(1, 40_000, 40_000)
    pipe.set_low_memory(vae_tile=64)
    pipe.check_memory(1, 40_000, 40_000)  # tiles of 64: the decoder's share fits


def test_channels_last_gives_the_same_result(folder):
    plain = generate(load_pipeline(folder))
    nhwc = generate(load_pipeline(folder).channels_last())
    assert max_rel_err(nhwc.latents, plain.latents) <= 1e-5
    assert max_rel_err(torch.from_numpy(np.asarray(nhwc.images[0])).float(),
                       torch.from_numpy(np.asarray(plain.images[0])).float()) <= 1e-2  # fmt: skip


def test_compile_gives_the_same_result(folder):
    plain = generate(load_pipeline(folder))
    compiled = generate(load_pipeline(folder).compile())
    assert max_rel_err(compiled.latents, plain.latents) <= 1e-5


def test_cli_flags(folder, tmp_path):
    out = tmp_path / "x.png"
    common = ["generate", PROMPT, "--weights", str(folder), "--steps", "2", "--height", "48", "--width", "64"]
    flags = ["--attention-chunk", "16", "--vae-tile", "8", "--drop-text-encoder", "--channels-last"]
    assert main([*common, *flags, "--out", str(out)]) == 0 and out.is_file()
    assert main([*common, "--vae-tile", "0", "--out", str(tmp_path / "y.png")]) == 2
    assert not (tmp_path / "y.png").exists()


LOAD_AND_MEASURE = """
import resource, sys, torch
from minisd.checkpoints import read_weights
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state = read_weights(sys.argv[1], dtype=torch.float32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert all(t.dtype == torch.float32 for t in state.values())
print((after - before) * 1024)
"""


def test_loading_fp16_weights_as_fp32_holds_them_once(tmp_path):
    """Peak memory of reading 200 MB of fp32 weights from fp16 storage: the fp32 tensors and little more
    (no memory map of the file, no fp16 copy beside the fp32 one)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(2_500_000, generator=generator).half() for i in range(20)}  # 100 MB fp16
    save_file(tensors, tmp_path / "w.safetensors")
    fp32_bytes = 4 * sum(t.numel() for t in tensors.values())
    run = subprocess.run(
        [sys.executable, "-c", LOAD_AND_MEASURE, str(tmp_path / "w.safetensors")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) <= 1.2 * fp32_bytes
    state = read_weights(tmp_path / "w.safetensors", dtype=torch.float32)
    assert all(torch.equal(state[k], t.float()) for k, t in tensors.items())
