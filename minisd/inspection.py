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
    OPENCLIP_PREFIX,
    CheckpointError,
    StateDict,
    has_ema_weights,
    strip_prefix,
    tensor_specs,
    text_encoder_from_openclip,
)
from .clip import CLIPTextConfig, CLIPTextModel
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig
from .variants import detect, network_configs


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
    variant = detect(specs)
    report: dict[str, Any] = {"layout": f"CompVis single file ({path.suffix})", "components": {}}
    report["variant"] = str(variant)  # from the shapes: SD1.x / SD2.x, inpainting or not
    sd2 = variant.family == "SD2.x"
    text, unet = network_configs(variant)
    configs = {"text_encoder": text, "unet": unet, "vae": VAEConfig()}
    claimed: set[str] = set()
    for name, layout in LAYOUTS.items():
        prefix = OPENCLIP_PREFIX if name == "text_encoder" and sd2 else layout.compvis_prefix
        mine = strip_prefix(specs, prefix)
        claimed |= {prefix + k for k in mine}
        convert = text_encoder_from_openclip if prefix == OPENCLIP_PREFIX else FROM_COMPVIS[name]
        if mine:
            report["components"][name] = _compare(convert(mine, configs[name]), _expected(name, configs[name]))
    claimed |= {k for k in specs if k.startswith("model_ema.")}
    if sd2:  # the tower's last layer and its image-text head, which SD 2.x does not use
        claimed |= {k for k in specs if k.startswith(OPENCLIP_PREFIX)}
    report["ema"] = has_ema_weights(specs)
    report["other"] = sorted(k for k in specs if k not in claimed)
    fits = all(not (c["missing"] or c["unexpected"] or c["wrong_shape"]) for c in report["components"].values())
    if fits and set(report["components"]) == set(LAYOUTS):
        report["family"] = f"{variant} (every key and shape as minisd's {variant} networks)"
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
