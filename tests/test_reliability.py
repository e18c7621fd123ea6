"""The catalogue of bad inputs (SECURITY.md): each ends in one documented exception through the API and one
line on stderr from the command line, leaves no output file, and never runs code from a file. Then the
numerical guards, determinism, interruption, and fuzzing of the tokenizer, the configs and the readers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import minisd
from minisd import CheckpointError, load_pipeline
from minisd.checkpoints import read_weights
from minisd.clip import CLIPTextConfig
from minisd.pipeline import SHIPPED_MODEL
from minisd.schedulers.schedule import SchedulerConfig
from minisd.unet import UNetConfig
from minisd.vae import VAEConfig

MINISD = str(Path(sys.executable).parent / "minisd")
UNET_FILE = SHIPPED_MODEL / "unet" / "diffusion_pytorch_model.safetensors"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def run(*args, cwd=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MINISD, *args], capture_output=True, cwd=cwd, timeout=300, **kw)


def one_line_error(proc: subprocess.CompletedProcess, match: str, code: int = 2) -> None:
    stderr = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("minisd: error:")]
    assert proc.returncode == code, stderr
    assert len(lines) == 1 and match in lines[0], stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: each bad file, through load_pipeline and through `minisd generate --weights`


class Payload:
    """Unpickling this creates a file: the test proves it never happens."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def copy_model(root: Path, name: str) -> Path:
    return Path(shutil.copytree(SHIPPED_MODEL, root / name))


def edit_config(folder: Path, component: str, **changes) -> Path:
    file = folder / component / "config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))
    return folder


def bad_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, the message's telling part)."""
    data = UNET_FILE.read_bytes()
    cases = {}

    def file(name: str, content: bytes) -> Path:
        (root / name).write_bytes(content)
        return root / name

    cases["truncated safetensors"] = (file("cut.safetensors", data[: len(data) // 2]), "not a readable safetensors")
    cases["not a checkpoint"] = (file("notes.safetensors", b"these are my notes"), "not a readable safetensors")
    cases["empty file"] = (file("empty.safetensors", b""), "not a readable safetensors")
    cases["empty .ckpt"] = (file("empty.ckpt", b""), "not a readable PyTorch checkpoint")
    cases["huge declared header"] = (file("huge.safetensors", struct.pack("<Q", 2**60) + b"{}"), "header too large")
    (root / "plain").mkdir()
    cases["folder without model_index.json"] = (root / "plain", "without model_index.json")
    missing = copy_model(root, "no-unet")
    shutil.rmtree(missing / "unet")
    cases["folder with a component missing"] = (missing, "unet: ")
    cases["config of the wrong type"] = (
        edit_config(copy_model(root, "cfg-type"), "unet", block_out_channels="wide"),
        "block_out_channels='wide' is invalid",
    )
    cases["config with an impossible value"] = (
        edit_config(copy_model(root, "cfg-value"), "unet", block_out_channels=[64, -128, 128]),
        "cannot be built",
    )
    cases["config that is not JSON"] = (copy_model(root, "cfg-json"), "is not valid JSON")
    (cases["config that is not JSON"][0] / "vae" / "config.json").write_text("{'single': quotes}")
    cases["tensors of the wrong shape"] = (
        edit_config(copy_model(root, "shape"), "unet", cross_attention_dim=256),
        "wrong shape",
    )
    sd2 = {"cond_stage_model.model.token_embedding.weight": torch.zeros(8, 4)}
    sd2["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3)
    torch.save({"state_dict": sd2}, root / "sd2.ckpt")
    cases["an SD2 single file given an SD1 config"] = (root / "sd2.ckpt", "The file is SD2.x")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Payload(str(root / "PWNED"))}, root / "evil.ckpt")
    cases["a pickle that carries code"] = (root / "evil.ckpt", "will not unpickle")
    return cases


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_checkpoints(tmp_path_factory.mktemp("bad"))


CHECKPOINT_CASES = [
    "truncated safetensors",
    "not a checkpoint",
    "empty file",
    "empty .ckpt",
    "huge declared header",
    "folder without model_index.json",
    "folder with a component missing",
    "config of the wrong type",
    "config with an impossible value",
    "config that is not JSON",
    "tensors of the wrong shape",
    "an SD2 single file given an SD1 config",
    "a pickle that carries code",
]


CONFIGS_GIVEN = {"an SD2 single file given an SD1 config": SHIPPED_MODEL}  # as --config


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint_api(bad, case):
    path, match = bad[case]
    with pytest.raises(CheckpointError, match=match.replace("(", r"\(")):
        load_pipeline(path, config=CONFIGS_GIVEN.get(case))
    assert not (path.parent / "PWNED").exists()  # the payload never ran


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint_cli(bad, case, tmp_path):
    path, match = bad[case]
    config = ["--config", str(CONFIGS_GIVEN[case])] if case in CONFIGS_GIVEN else []
    proc = run("generate", "a red circle", "--weights", str(path), *config, "--out", "x.png", cwd=tmp_path)
    one_line_error(proc, match)
    assert list(tmp_path.iterdir()) == []  # no picture, no temporary file
    assert not (path.parent / "PWNED").exists()


def test_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "absent.safetensors")
    one_line_error(run("generate", "x", "--weights", "absent.safetensors", cwd=tmp_path), "does not exist")


# ---------------------------------------------------------------------------------------------------------
# Prompts


def test_prompts_that_run(pipe):
    """Empty, control characters, 10 000 characters: pictures, with a warning where text was dropped."""
    for prompt in ("", "a red\x00\x07 circle\x1b[31m on the left\r\n", "red " * 2500):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = pipe.text_to_image(prompt, steps=2, progress=False)
        assert result.images[0].size == (64, 64)
        dropped = [str(w.message) for w in caught if "dropped" in str(w.message)]
        assert bool(dropped) == (len(prompt) > 1000)
    assert "prompt is 2502 tokens; CLIP sees 77, so the last 2425 were dropped" in dropped[0]


def test_prompt_that_is_not_text(pipe):
    for prompt in (None, 42, ["a", 3]):
        with pytest.raises(TypeError, match="prompt must be a string or a list of strings"):
            pipe.text_to_image(prompt, steps=2, progress=False)


def test_invalid_utf8_from_the_command_line(tmp_path):
    """Bytes that are not UTF-8 become U+FFFD with a warning; the picture is made."""
    proc = run("generate", b"a red \xff\xfe circle", "--steps", "2", "--out", "x.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"not valid Unicode" in proc.stderr and (tmp_path / "x.png").is_file()
    proc = run("generate", "x" * 10_000, "--steps", "2", "--out", "y.png", cwd=tmp_path)
    assert proc.returncode == 0 and b"were dropped" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Numbers: the API's ValueError, the command line's one line


NUMBER_CASES = [
    (dict(height=0), ["--height", "0"], "need a positive number of pixels"),
    (dict(width=-8), ["--width", "-8"], "need a positive number of pixels"),
    (dict(height=66), ["--height", "66"], "not a positive multiple of 4"),
    (dict(height=80_000, width=80_000), ["--height", "80000", "--width", "80000"], "GiB of memory"),
    (dict(steps=0), ["--steps", "0"], "at least 1"),
    (dict(steps=-3), ["--steps", "-3"], "at least 1"),
    (dict(guidance_scale=-1.0), ["--guidance", "-1"], "guidance_scale must be a finite number ≥ 0"),
    (dict(guidance_scale=math.nan), ["--guidance", "nan"], "guidance_scale must be a finite number ≥ 0"),
    (dict(scheduler="lms"), ["--scheduler", "lms"], "lms"),
    (dict(num_images=0), ["--num-images", "0"], "at least 1"),
    (dict(seed=1.5), ["--seed", "1.5"], "1.5"),
    (dict(seed=-1), ["--seed", "-1"], "seed must be a whole number from 0 to 2**64 − 1"),
    (dict(seed=2**64), ["--seed", str(2**64)], "seed must be a whole number from 0 to 2**64 − 1"),
    (dict(eta=0.5), ["--eta", "0.5"], "eta=0.5 is DDIM's setting"),
]


@pytest.mark.parametrize(("kwargs", "flags", "match"), NUMBER_CASES, ids=lambda c: str(c)[:40])
def test_bad_numbers(pipe, kwargs, flags, match, tmp_path):
    api_match = {"need a positive number of pixels": "not a positive multiple", "at least 1": ""}.get(match, match)
    with pytest.raises(ValueError, match=api_match.replace("*", r"\*") if api_match else None):
        pipe.text_to_image("a red circle", **({"steps": 2} | kwargs), progress=False)
    proc = run("generate", "a red circle", "--steps", "2", *flags, "--out", "x.png", cwd=tmp_path, text=True)
    one_line_error(proc, match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, math.nan])
def test_bad_strength(pipe, strength, tmp_path):
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(ValueError, match="strength"):
        pipe.image_to_image("x", picture, strength=strength, steps=4, progress=False)
    picture.save(tmp_path / "in.png")
    proc = run("img2img", "x", "--image", "in.png", "--strength", str(strength), "--out", "o.png", cwd=tmp_path)
    one_line_error(proc, "strength")
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------------------------------------
# Files


def test_output_places(tmp_path):
    (tmp_path / "pics.png").mkdir()
    one_line_error(run("generate", "x", "--out", "pics.png", cwd=tmp_path, text=True), "is a folder")
    one_line_error(run("generate", "x", "--out", "absent/x.png", cwd=tmp_path, text=True), "does not exist")
    # A folder nobody may write to (even root cannot write into /proc): the write fails, nothing is left.
    proc = run("generate", "x", "--steps", "1", "--out", "/proc/minisd.png", text=True)
    one_line_error(proc, "/proc")


def test_unreadable_input_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    one_line_error(run("img2img", "x", "--image", "broken.png", cwd=tmp_path, text=True), "not a picture")
    assert list(tmp_path.iterdir()) == [tmp_path / "broken.png"]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16"])
def test_input_images_of_every_kind_are_converted(pipe, mode, tmp_path):
    rgb = Image.new("RGB", (64, 64), (20, 20, 20))
    rgb.paste((230, 40, 40), (16, 16, 48, 48))
    picture = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.full((64, 64), 60000, dtype=np.uint16))
    pixels = pipe.preprocess(picture)
    assert pixels.shape == (1, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    if mode == "I;16":  # 60000 of 65535 is light grey, not clipped to white
        assert abs(float(pixels.mean()) - (60000 / 65535 * 2 - 1)) < 0.01
    picture.save(tmp_path / "in.png")
    proc = run("img2img", "x", "--image", "in.png", "--steps", "4", "--out", "o.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "o.png").mode == "RGB"


# ---------------------------------------------------------------------------------------------------------
# Interruption, numerical guards, determinism


def test_ctrl_c_leaves_no_picture_and_exits_130(tmp_path):
    proc = subprocess.Popen(
        [MINISD, "generate", "a red circle", "--steps", "1000", "--out", "x.png"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    deadline = time.time() + 120
    while "denoising" not in seen and time.time() < deadline:  # wait until the loop runs
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130
    assert "interrupted; no picture was written" in rest and "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []


def test_nan_in_the_latents_is_reported(pipe):
    hook = pipe.unet.conv_out.register_forward_hook(lambda m, a, out: out * math.nan)
    try:
        with pytest.raises(FloatingPointError, match=r"the latents hold NaN or Inf after step 0"):
            pipe.text_to_image("x", steps=3, progress=False)
    finally:
        hook.remove()
    hook = pipe.vae.decoder.conv_out.register_forward_hook(lambda m, a, out: out + math.inf)
    try:
        with pytest.raises(FloatingPointError, match="the VAE decoder gave NaN or Inf"):
            pipe.text_to_image("x", steps=3, progress=False)
    finally:
        hook.remove()
    pipe.dtype = torch.float16  # only the hint's wording depends on it
    try:
        assert "load the pipeline with dtype=torch.bfloat16 or float32" in pipe.overflow_hint()
    finally:
        pipe.dtype = torch.float32


def test_nan_weights_from_the_command_line(tmp_path):
    from safetensors.torch import load_file, save_file

    model = copy_model(tmp_path, "nan-model")
    file = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    state["conv_out.bias"] = torch.full_like(state["conv_out.bias"], math.nan)
    save_file(state, file)
    proc = run("generate", "x", "--weights", str(model), "--steps", "2", "--out", "x.png", cwd=tmp_path, text=True)
    one_line_error(proc, "NaN or Inf", code=1)
    assert not (tmp_path / "x.png").exists()


def test_same_seed_same_bytes_other_seed_other_picture(tmp_path):
    for name, seed in (("a.png", "5"), ("b.png", "5"), ("c.png", "6")):
        proc = run("generate", "a blue square at the top", "--seed", seed, "--steps", "10", "--out", name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b  # byte-identical files
    assert a != c and not np.array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "c.png"))
    )


# ---------------------------------------------------------------------------------------------------------
# Fuzzing: every case ends in the documented error type (or succeeds), never another exception or a hang


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
CONFIGS = [UNetConfig, VAEConfig, CLIPTextConfig, SchedulerConfig]


@FUZZ
@given(cls=st.sampled_from(CONFIGS), data=st.data())
def test_fuzz_config_parsing(cls, data):
    names = sorted(cls.__dataclass_fields__)
    keys = data.draw(st.lists(st.sampled_from(names) | st.text(max_size=12), max_size=6))
    entries = {k: data.draw(JSON) for k in keys}
    with contextlib.suppress(cls.ERROR):
        cls.from_dict(entries)


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_config_file_text(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(CheckpointError):
            UNetConfig.from_json(path)


@FUZZ
@given(content=st.binary(max_size=2000), suffix=st.sampled_from([".safetensors", ".ckpt", ".bin"]))
def test_fuzz_reader_random_bytes(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(content)
        with contextlib.suppress(CheckpointError):
            read_weights(path)


VALID = UNET_FILE.read_bytes()
TOKENIZER = minisd.load_tokenizer()


@FUZZ
@given(cut=st.integers(0, len(VALID) - 1), flip=st.integers(0, 400))
def test_fuzz_reader_truncations_and_damaged_headers(cut, flip):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        damaged = bytearray(VALID[:cut] if cut > 0 else VALID)
        if cut == 0 and flip < len(damaged):  # a flipped byte inside the JSON header instead of a cut
            damaged[8 + flip] ^= 0x5A
        path.write_bytes(bytes(damaged))
        with contextlib.suppress(CheckpointError):
            read_weights(path)


@FUZZ
@given(st.text(st.characters() | st.sampled_from([chr(c) for c in range(0xD800, 0xE000, 97)]), max_size=120))
def test_fuzz_tokenizer_any_string_even_lone_surrogates(text):
    tok = TOKENIZER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tok([text])
    assert ids.shape == (1, 77)


def test_security_md_lists_the_catalogue():
    text = (Path(__file__).parent.parent / "SECURITY.md").read_text()
    for case in CHECKPOINT_CASES:
        assert case in text, case
    assert os.path.basename(__file__) in text
