"""The command line, run as users run it: the console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minisd

from .tiny_sd import build_reference, save_compvis, save_diffusers

MINISD = str(Path(sys.executable).parent / "minisd")  # the console script installed beside this Python


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ref = build_reference()
    save_compvis(ref, root / "tiny.safetensors")
    return save_diffusers(ref, root / "tiny")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([MINISD, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minisd: error:"), proc.stderr
    assert match in lines[0]
    assert "Traceback" not in proc.stderr


def test_generate_writes_the_api_picture(folder, tmp_path):
    out = tmp_path / "pic.png"
    proc = run("generate", "a red circle", "--weights", str(folder), "--steps", "4", "--seed", "5", "--height", "32",
               "--width", "48", "--scheduler", "euler_ancestral", "--negative", "blurry", "--out", str(out),
               "--trace", str(tmp_path / "trace"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    api = minisd.load_pipeline(folder).text_to_image(
        "a red circle", "blurry", steps=4, seed=5, height=32, width=48, scheduler="euler_ancestral", progress=False
    )
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(api.images[0]))
    assert (tmp_path / "trace" / "trace.png").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a picture, not an owner-only temporary file


def test_python_dash_m_and_num_images(folder, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "minisd", "generate", "x", "--weights", str(folder), "--steps", "2",
         "--num-images", "2", "--out", str(tmp_path / "many.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many-0.png", "many-1.png"]


def test_img2img(folder, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    proc = run("img2img", "a red circle", "--image", str(tmp_path / "in.png"), "--weights", str(folder),
               "--strength", "0.5", "--steps", "4", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (40, 32)


def test_single_file_with_config_folder(folder, tmp_path):
    out = tmp_path / "single.png"
    proc = run("generate", "x", "--weights", str(folder.parent / "tiny.safetensors"), "--config", str(folder),
               "--steps", "2", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["generate", "x", "--stepz", "3"], "unrecognized arguments: --stepz"),
        (["generate", "x", "--scheduler", "lms"], "invalid choice: 'lms'"),
        (["generate", "x", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["generate", "x", "--height", "0"], "--height 0: need a positive number of pixels"),
        (["generate", "x", "--steps", "0"], "--steps 0: need at least 1"),
        (["generate", "x", "--out", "pic.gif"], "give a .png"),
        (["img2img", "x", "--image", "absent.png"], "--image absent.png does not exist"),
        (["inspect", "absent.safetensors"], "does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line(args, match, tmp_path):
    assert_one_line_error(run(*args, cwd=tmp_path), match)
    assert list(tmp_path.iterdir()) == []  # no output file on failure


def test_wrong_weights_leave_no_file(folder, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "pic.png"
    assert_one_line_error(run("generate", "x", "--weights", str(bad), "--out", str(out)), "not a readable safetensors")
    # A valid file of other shapes than SD1.x, without its config: the mismatch is named.
    proc = run("generate", "x", "--weights", str(folder.parent / "tiny.safetensors"), "--out", str(out))
    assert_one_line_error(proc, "does not fit the model's config")
    assert not out.exists()


def test_inspect(folder):
    proc = run("inspect", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "diffusers folder" in proc.stdout and "family: custom" in proc.stdout
    assert "unet:" in proc.stdout and "parameters" in proc.stdout and "PNDMScheduler" in proc.stdout
    proc = run("inspect", str(folder.parent / "tiny.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert "CompVis single file" in proc.stdout and "EMA weights: absent" in proc.stdout
    assert "wrong shape keys" in proc.stdout  # small networks against SD1.x's shapes


def test_inspect_finds_ema_and_other_tensors(tmp_path):
    from safetensors.torch import save_file

    state = {"model_ema.decay": torch.tensor(0.99), "model_ema.num_updates": torch.tensor(1)}
    state |= {f"model_ema.diffusion_modelblock{i}weight": torch.zeros(2) for i in range(3)}
    state |= {"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3), "alphas_cumprod": torch.ones(1000)}
    save_file(state, tmp_path / "f.safetensors")
    proc = run("inspect", str(tmp_path / "f.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert "EMA weights: present" in proc.stdout and "alphas_cumprod" in proc.stdout


def test_size_errors_come_from_the_model(folder, tmp_path):
    out = tmp_path / "pic.png"
    proc = run("generate", "x", "--weights", str(folder), "--height", "33", "--out", str(out))
    assert_one_line_error(proc, "height 33 is not a positive multiple of 2; try 32")  # the tiny VAE's factor
    assert not out.exists()


def test_missing_gpu_is_one_line(monkeypatch, capsys, tmp_path):
    from minisd import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["generate", "x", "--device", "cuda", "--out", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "minisd: error: --device cuda: this PyTorch sees no CUDA GPU (a CPU build, or no driver)"
    )


def test_failure_while_writing_leaves_no_file(folder, tmp_path, monkeypatch, capsys):
    """A write that fails after the pictures exist (here: the second of three files) leaves none of them."""
    from minisd import cli

    real_save, calls = Image.Image.save, []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    args = ["generate", "x", "--weights", str(folder), "--steps", "2", "--num-images", "2"]
    args += ["--out", str(tmp_path / "pic.png"), "--trace", str(tmp_path / "trace")]
    assert cli.main(args) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_trace_into_a_file_is_one_line(folder, tmp_path):
    (tmp_path / "taken").write_text("")
    proc = run("generate", "x", "--weights", str(folder), "--steps", "2", "--out", str(tmp_path / "p.png"),
               "--trace", str(tmp_path / "taken"))  # fmt: skip
    assert_one_line_error(proc, "is a file, not a folder")
    assert not (tmp_path / "p.png").exists()
