"""minisd train: the quick mode end to end, resuming, data parallel with two processes, and its errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import minisd
from minisd import shapes
from minisd.schedulers import make_scheduler
from minisd.train import (
    EMA,
    SHIPPED_GUIDANCE,
    VAE_INIT_LOGVAR,
    DecoderLoss,
    LatentPool,
    Settings,
    Trainer,
    VAELoss,
    edges,
    eps_loss,
    sample_timesteps,
    train,
)

pytestmark = pytest.mark.xdist_group("train")  # the torchrun test wants both cores


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    return train(Settings.quick(tmp_path_factory.mktemp("tiny")))


def test_quick_training_writes_a_model_minisd_and_diffusers_load(quick_model):
    for name in ("model_index.json", "loss.png", "training.json", "unet/config.json", "tokenizer/vocab.json"):
        assert (quick_model / name).is_file(), name
    pipe = minisd.load_pipeline(quick_model)
    ours = pipe.text_to_image("a red circle", steps=3, progress=False)
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(quick_model, safety_checker=None)
    assert pipe.defaults.guidance_scale == SHIPPED_GUIDANCE  # the folder's generation_defaults.json, minisd's own
    generator = torch.Generator().manual_seed(0)
    guidance = pipe.defaults.guidance_scale  # diffusers does not read that file: its users pass the scale
    theirs = reference(
        "a red circle", num_inference_steps=3, guidance_scale=guidance, generator=generator, output_type="latent"
    )
    assert ((ours.latents - theirs.images).abs().max() / theirs.images.abs().max()) <= 1e-4
    training = json.loads((quick_model / "training.json").read_text())
    assert training["scaling_factor"] == pytest.approx(pipe.vae.config.scaling_factor, rel=1e-6)
    settings = dataclasses.asdict(Settings.quick(quick_model))
    assert all(training[name] == value for name, value in settings.items() if name != "out")


def test_interrupted_training_resumes_where_it_stopped(tmp_path):
    """Stopped after the VAE, resumed: the same weights as an uninterrupted run."""
    whole = Trainer(Settings.quick(tmp_path / "whole"))
    whole.run()
    part = Trainer(Settings.quick(tmp_path / "part"))
    part.train_vae()
    part.save_state()
    resumed = Trainer(Settings.quick(tmp_path / "part"))
    resumed.load_state()
    assert resumed.phase == "vae" and resumed.step == part.step
    resumed.run()
    for name in ("vae", "unet", "text_encoder"):
        for (key, a), b in zip(
            getattr(whole, name).state_dict().items(), getattr(resumed, name).state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (name, key)


def test_resume_without_a_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .*train_state\.pt to resume from"):
        train(Settings.quick(tmp_path), resume=True)


def test_cli_quick_and_bad_steps(tmp_path):
    run = [sys.executable, "-m", "minisd", "train", "--out", str(tmp_path / "m")]
    for flag in ("--unet-steps", "--decoder-steps"):
        bad = subprocess.run([*run, flag, "0"], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.strip() == f"minisd: error: {flag} 0: need at least 1"
    ok = subprocess.run([*run, "--quick"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "model_index.json").is_file()


def test_two_processes_with_torchrun(tmp_path):
    """DistributedDataParallel on two CPU processes (gloo): the path for users who outgrow one machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, "-m", "minisd", "train", "--quick", "--out", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    training = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert training["world_size"] == 2
    minisd.load_pipeline(tmp_path / "ddp").text_to_image("a blue square", steps=2, progress=False)


def test_the_latent_pool_holds_each_pictures_posterior_and_caption(tmp_path):
    trainer = Trainer(Settings.quick(tmp_path))
    pool = LatentPool(trainer.vae, lambda i: 1000 + i, 6, trainer.device, pair_share=0.0, chunk=4)
    assert pool.moments.shape == (6, 8, 16, 16)
    assert pool.captions == shapes.batch(1000, 4, pair_share=0.0)[1] + shapes.batch(1001, 2, pair_share=0.0)[1]
    assert all(sum(c.count(s) for s in shapes.SHAPES) == 1 for c in pool.captions)  # one shape in each
    z0, captions = pool.sample(5, torch.Generator().manual_seed(0))
    index = torch.randint(6, (5,), generator=torch.Generator().manual_seed(0))
    assert captions == [pool.captions[i] for i in index]
    assert z0.shape == (5, 4, 16, 16)
    # z0 = scaling_factor · (μ + σ·ε): within a few σ of the scaled mean
    mean, logvar = pool.moments[index].chunk(2, dim=1)
    distance = (z0 / trainer.vae.config.scaling_factor - mean) / (0.5 * logvar).exp()
    assert distance.abs().max() < 6 and distance.std() > 0.5


def test_the_vae_posterior_starts_nearly_deterministic(tmp_path):
    """log σ² starts near VAE_INIT_LOGVAR, not 0: the decoder does not first learn to blur unit noise."""
    vae = Trainer(Settings.quick(tmp_path)).vae
    x, _ = shapes.batch(0, 4)
    with torch.no_grad():
        posterior = vae.encode(x)
    assert posterior.logvar.mean() == pytest.approx(VAE_INIT_LOGVAR, abs=1.0)


def test_the_ema_follows_the_weights_by_its_formula():
    """θ_ema ← d·θ_ema + (1 − d)·θ for every tensor, d warming up as (1 + n)/(10 + n)."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = min(0.9, 2 / 11)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ema.shadow[name], d * before[name] + (1 - d) * value)


def test_the_vae_loss_is_the_mean_squared_error_plus_the_kl_per_pixel_value(tmp_path):
    vae = Trainer(Settings.quick(tmp_path)).vae
    x, _ = shapes.batch(0, 2)
    loss = VAELoss(vae, kl_weight=0.5)(x, torch.Generator().manual_seed(0))
    posterior = vae.encode(x)
    y = vae.decode(posterior.sample(torch.Generator().manual_seed(0)))
    kl = 0.5 * (posterior.mean**2 + posterior.logvar.exp() - 1 - posterior.logvar).sum()
    torch.testing.assert_close(loss, (y - x).pow(2).mean() + 0.5 * kl / x.numel())


def test_the_vae_loss_counts_the_outlines_one_plus_edge_weight_times(tmp_path):
    vae = Trainer(Settings.quick(tmp_path)).vae
    x, _ = shapes.batch(0, 2)
    outline = edges(x)  # (B, 1, H, W)
    assert 0 < outline.float().mean() < 0.2  # the outlines, a small part of the picture
    loss = VAELoss(vae, kl_weight=0.0, edge_weight=4.0)(x, torch.Generator().manual_seed(0))
    y = vae.decode(vae.encode(x).sample(torch.Generator().manual_seed(0)))
    error = (y - x).pow(2)
    torch.testing.assert_close(loss, (error + 4 * error * outline).mean())


def test_outlines_are_where_a_picture_changes():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 2:5, 2:5] = 1.0  # a 3×3 square on a flat background
    outline = edges(x)[0, 0]
    assert outline[3, 3] == 0  # the square's inside: its 3×3 neighbourhood is flat
    assert outline[2, 2] and outline[1, 1] and outline[4, 5]  # its border and the pixels beside it
    assert outline[0, 7] == 0 and outline[7, 0] == 0  # the background far away


def test_the_decoder_loss_decodes_a_posterior_sample_plus_noise(tmp_path):
    vae = Trainer(Settings.quick(tmp_path)).vae
    x, _ = shapes.batch(0, 2)
    loss = DecoderLoss(vae, noise=0.7)(x, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    z = vae.encode(x).sample(generator)
    z = z + 0.7 * torch.randn(z.shape, generator=generator)
    torch.testing.assert_close(loss, (vae.decode(z) - x).pow(2).mean())


def test_the_decoder_phase_trains_the_decoder_alone(tmp_path):
    """The encoder, and so the latent space the UNet learned, leaves the decoder phase unchanged."""
    trainer = Trainer(Settings.quick(tmp_path))
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    trainer.train_decoder()
    changed = {k for k, v in trainer.vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.startswith(("decoder.", "post_quant_conv."))}
    assert len(trainer.losses["decoder"]) == trainer.s.decoder_steps


def test_the_eps_loss_weights_each_sample_by_one_minus_alpha_bar():
    """L = mean over the batch of (1 − ᾱ_t)·‖ε − ε_θ(z_t, t)‖², with t, ε and z_t drawn as the docstring says."""

    class Zero(torch.nn.Module):  # predicts ε = 0, so each sample's error is the mean of ε²
        def forward(self, zt, t, ids):
            return torch.zeros_like(zt)

    scheduler, z0 = make_scheduler("ddpm"), torch.randn(6, 4, 8, 8)
    loss = eps_loss(Zero(), scheduler, None, z0, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    t = sample_timesteps(6, replay)
    noise = torch.randn(z0.shape, generator=replay)
    expected = ((1 - scheduler.alphas_cumprod[t]) * noise.pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss, expected)
    assert (t >= 700).sum() >= 3  # half of the timesteps come from the high-noise end


def test_the_cli_help_names_the_settings_defaults():
    """`minisd train --help` writes the step defaults out (the CLI does not import the trainer); they must be
    Settings' own."""
    from minisd.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    for name in ("vae_steps", "unet_steps", "decoder_steps"):
        assert helps[name].endswith(f"(default {Settings.__dataclass_fields__[name].default})"), helps[name]
