"""What a checkpoint holds, read without building its networks: ``minisd inspect``.

For each component: parameters, dtypes, and the keys that are missing, unexpected or of the wrong shape
against minisd's networks (SD1.x's for a single file, the folder's configs for a diffusers folder); the
family detected; whether a single file holds EMA weights; what else it carries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    FROM_COMPVIS,
    FROM_DIFFUSERS,
    LAYOUTS,
    CheckpointError,
    StateDict,
    has_ema_weights,
    strip_prefix,
    tensor_specs,
)
from .clip import CLIPTextConfig, CLIPTextModel
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig


def _expected(name: str, config=None) -> StateDict:
    """Component ``name`` built with ``config`` (default: SD1.x) on the meta device: its keys and shapes."""
    cls = {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae": AutoencoderKL}[name]
    with torch.device("meta"):
        return cls(config).state_dict()


def _compare(found: StateDict, expected: StateDict) -> dict[str, Any]:
    return {
        "tensors": len(found),
        "parameters": sum(t.numel() for t in found.values()),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in found.values()}),
        "missing": sorted(k for k in expected if k not in found),
        "unexpected": sorted(k for k in found if k not in expected),
        "wrong_shape": sorted(k for k in found if k in expected and found[k].shape != expected[k].shape),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds: layout, components (parameters, dtypes, key mismatches), family, EMA."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a diffusers model folder or a single checkpoint file")
    if path.is_file():
        return _describe_single_file(path)
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"{path} is a folder without model_index.json: not a diffusers model folder")
    return _describe_folder(path)


def _describe_single_file(path: Path) -> dict[str, Any]:
    specs = tensor_specs(path)
    report: dict[str, Any] = {"layout": f"CompVis single file ({path.suffix})", "components": {}}
    configs = {"text_encoder": None, "unet": UNetConfig(), "vae": VAEConfig()}  # SD1.x
    claimed: set[str] = set()
    for name, layout in LAYOUTS.items():
        mine = strip_prefix(specs, layout.compvis_prefix)
        claimed |= {layout.compvis_prefix + k for k in mine}
        if mine:
            report["components"][name] = _compare(FROM_COMPVIS[name](mine, configs[name]), _expected(name))
    openclip = strip_prefix(specs, "cond_stage_model.model.")
    if openclip:
        report["components"]["text_encoder (OpenCLIP, SD2.x)"] = _compare(openclip, {})
    claimed |= {k for k in specs if k.startswith(("cond_stage_model.model.", "model_ema."))}
    report["ema"] = has_ema_weights(specs)
    report["other"] = sorted(k for k in specs if k not in claimed)
    cross = specs.get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    fits = all(not (c["missing"] or c["unexpected"] or c["wrong_shape"]) for c in report["components"].values())
    if fits and set(report["components"]) == set(LAYOUTS):
        report["family"] = "SD1.x (every key and shape as minisd's SD1.x networks)"
    elif openclip or (cross is not None and cross.shape[-1] == 1024):
        report["family"] = "SD2.x (load its diffusers folder: single-file SD2.x is not supported)"
    else:
        report["family"] = "custom (pass the matching diffusers folder as config)"
    return report


def _describe_folder(path: Path) -> dict[str, Any]:
    index = json.loads((path / "model_index.json").read_text())
    report: dict[str, Any] = {"layout": "diffusers folder", "components": {}, "ema": False, "other": []}
    config_classes = {"text_encoder": CLIPTextConfig, "unet": UNetConfig, "vae": VAEConfig}
    configs = {}
    for name, layout in LAYOUTS.items():
        folder = path / layout.folder
        file = next((folder / f for f in layout.files if (folder / f).is_file()), None)
        try:
            if file is None:
                raise CheckpointError(f"no weights in {folder}")
            configs[name] = config_classes[name].from_json(folder / "config.json")
            found = FROM_DIFFUSERS.get(name, lambda s: s)(tensor_specs(file))
            report["components"][name] = _compare(found, _expected(name, configs[name]))
        except (CheckpointError, ValueError) as e:
            report["components"][name] = {"error": str(e)}
    for name in ("tokenizer", "scheduler"):
        report["components"][name] = {"class": (index.get(name) or [None, None])[-1]}
    unet = configs.get("unet")
    if unet is not None and unet.cross_attention_dim == 768 and unet.block_out_channels == [320, 640, 1280, 1280]:
        report["family"] = "SD1.x"
    elif unet is not None and unet.cross_attention_dim == 1024:
        report["family"] = "SD2.x"
    else:
        report["family"] = "custom"
    return report
