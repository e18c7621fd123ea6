"""The one place that knows where Stable Diffusion's weights live in the public checkpoint layouts.

Two layouts are published:

* **diffusers folder** — one subfolder per component (``text_encoder/``, ``unet/``, ``vae/``, ...), each with a
  ``config.json`` and a weights file. minisd's modules carry the same names, so these load unchanged.
* **CompVis single file** — the original training code's ``.ckpt`` (a pickle) or ``.safetensors``: all three
  networks in one flat dict, under a prefix per network and, for the UNet and the VAE, under the original
  code's module names. Each component's ``from_compvis`` rule set below renames them to the diffusers names.

Everything a real file holds besides the networks (noise-schedule buffers, optimizer state, ``global_step``)
is ignored. Pickles are only read with ``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .config import CheckpointError

StateDict = dict[str, torch.Tensor]
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# ---------------------------------------------------------------------------------------------------------
# Reading a weights file
# ---------------------------------------------------------------------------------------------------------


class LightningObject:
    """An inert stand-in, unpickled in place of the PyTorch Lightning objects that SD's training code saved
    beside the weights (a ``callbacks`` entry); nothing of theirs is imported or run."""


LIGHTNING_OBJECTS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_header(path: Path) -> tuple[int, dict[str, dict]]:
    """Where a .safetensors file's data begins, and its header: {name: {dtype, shape, data_offsets}}.

    The format: 8 bytes (little-endian header length n), n bytes of JSON, then the tensors' bytes. Every entry
    is checked against the file's size, so that a damaged file is refused before anything is read.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 8:
                raise ValueError(f"{size} bytes, too short for a header")
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError(f"header too large: {n:,} bytes declared, the file has {size:,}")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for key, spec in header.items():
            start, end = spec["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (start, end, *spec["shape"])):
                raise ValueError(f"tensor {key!r} has a shape or offsets that are not whole numbers")
            count = math.prod(spec["shape"])
            item = SAFETENSORS_DTYPES[spec["dtype"]].itemsize
            if not 0 <= start <= end <= size - 8 - n or end - start != count * item:
                raise ValueError(f"tensor {key!r} lies outside the file or has the wrong length")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # json errors are ValueErrors
        raise CheckpointError(f"{path} is not a readable safetensors file ({e!r:.200}); re-download it") from e
    return 8 + n, header


def cast_floats(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in ``dtype`` if it holds floats and a dtype is given (integer buffers keep theirs)."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def read_safetensors(path: Path, wanted: Callable[[str], bool], dtype: torch.dtype | None) -> StateDict:
    """The wanted tensors, read one by one with plain reads and each cast to ``dtype`` (floats only) as it
    arrives: loading holds the model's weights once, with neither a memory map of the file nor a copy of
    its fp16 tensors beside their fp32 casts."""
    begin, header = safetensors_header(path)
    state = {}
    with open(path, "rb") as f:
        for key, spec in header.items():
            if not wanted(key):
                continue
            start, end = spec["data_offsets"]
            f.seek(begin + start)
            stored = SAFETENSORS_DTYPES[spec["dtype"]]
            data = bytearray(end - start)
            f.readinto(data)  # straight into the tensor's buffer: no bytes object to copy from
            tensor = torch.frombuffer(data, dtype=stored) if data else torch.empty(0, dtype=stored)
            tensor = tensor.reshape(spec["shape"])
            state[key] = cast_floats(tensor, dtype)
    return state


def read_weights(
    path: str | Path, prefixes: tuple[str, ...] | None = None, dtype: torch.dtype | None = None
) -> StateDict:
    """The tensors of a ``.safetensors`` file or a pickled checkpoint (read with ``weights_only=True``).

    With ``prefixes``, only the keys that start with one of them: a .safetensors file then reads just those
    tensors, and a pickle is memory-mapped, so that loading three components from one 4 GB file does not
    hold it in memory three times. With ``dtype``, floating-point tensors are cast to it as they are read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the path to the weights")
    wanted = (lambda k: True) if prefixes is None else (lambda k: k.startswith(prefixes))
    if path.suffix == ".safetensors":
        return read_safetensors(path, wanted, dtype)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown weights format {path.suffix!r}; use .safetensors (preferred) or .ckpt/.pt/.bin"
        )
    try:
        with torch.serialization.safe_globals([(LightningObject, name) for name in LIGHTNING_OBJECTS]):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # files from before PyTorch 1.6's zip format cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, which minisd will not unpickle (it could run code). "
            "Convert it to .safetensors, or use the .safetensors release of the model."
        ) from e
    except Exception as e:  # a damaged pickle fails in any of a dozen ways inside torch's unpickler (fuzzed)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e!r:.200}); re-download it") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):  # Lightning: {"state_dict": ...}
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors; it is not a model checkpoint")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor) and wanted(k)}
    return {k: cast_floats(v, dtype) for k, v in tensors.items()}


def pickle_entry(path: Path, key: str):
    """A top-level entry of a pickled checkpoint besides its tensors (e.g. ``global_step``), or None."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable here: read_weights names the problem when the weights are loaded
        return None
    return data.get(key) if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------
# Where each component lives
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one component's weights are in each public layout."""

    folder: str  # diffusers subfolder
    files: tuple[str, ...]  # weights files in that subfolder, in order of preference
    compvis_prefix: str  # prefix of this network's keys in a CompVis single file


# A diffusers folder may hold a half-precision "variant" file instead of (or beside) the full-precision one.
MODEL_FILES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
DIFFUSION_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
LAYOUTS = {
    "text_encoder": Layout("text_encoder", MODEL_FILES, "cond_stage_model.transformer."),
    "unet": Layout("unet", DIFFUSION_FILES, "model.diffusion_model."),
    "vae": Layout("vae", DIFFUSION_FILES, "first_stage_model."),
}

# What diffusers/transformers read from each component's config.json besides the fields of minisd's configs.
CONFIG_HEADERS = {
    "text_encoder": {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model"},
    "unet": {"_class_name": "UNet2DConditionModel"},
    "vae": {"_class_name": "AutoencoderKL"},
}
DIFFUSERS_VERSION = "0.42.1"  # the version whose layout the written folders follow


def save_component(name: str, folder: Path, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Write ``model`` as the diffusers subfolder ``name``: config.json (every field written out) and weights."""
    sub = Path(folder) / LAYOUTS[name].folder
    sub.mkdir(parents=True, exist_ok=True)
    config = CONFIG_HEADERS[name] | dataclasses.asdict(model.config)
    if name == "text_encoder":  # transformers also wants the special tokens and a projection width
        config |= {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
        config |= {"projection_dim": model.config.hidden_size}
        config["dtype"] = "float32"  # load as fp32 whatever the files' dtype (transformers keeps it otherwise)
    else:
        config["_diffusers_version"] = DIFFUSERS_VERSION
    (sub / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, sub / LAYOUTS[name].files[0], metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------
# Renaming rules, one set per component
# ---------------------------------------------------------------------------------------------------------


def text_encoder_from_diffusers(state: StateDict) -> StateDict:
    """transformers < 5 saved keys as ``text_model.*`` (the public SD folders); 5.x saves them bare.

    ``position_ids`` (stored by old versions, sometimes as floats) is dropped: minisd rebuilds it.
    """
    return {
        (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
        if not k.endswith("position_ids")
    }


def text_encoder_from_compvis(state: StateDict, config) -> StateDict:
    """CompVis wraps a transformers CLIPTextModel, so past the prefix the names already agree."""
    return text_encoder_from_diffusers(state)


# SD 2.x single files hold OpenCLIP's text tower (ViT-H/14) under cond_stage_model.model.*: one fused
# attention input projection per layer (in_proj_weight: q, k, v stacked on dim 0), other names for the norms
# and the MLP, and two tensors SD never uses: text_projection and logit_scale (CLIP's image-text head).
OPENCLIP_PREFIX = "cond_stage_model.model."
OPENCLIP_RENAMES = [
    ("transformer.resblocks.", "text_model.encoder.layers."),
    (".ln_1.", ".layer_norm1."),
    (".ln_2.", ".layer_norm2."),
    (".attn.out_proj.", ".self_attn.out_proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
    ("ln_final.", "text_model.final_layer_norm."),
    ("token_embedding.", "text_model.embeddings.token_embedding."),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
]
OPENCLIP_UNUSED = ("text_projection", "logit_scale")
RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")


def text_encoder_from_openclip(state: StateDict, config) -> StateDict:
    """OpenCLIP's text tower (past the prefix) to transformers' names.

    SD 2.x conditions on the penultimate layer's output, through the final LayerNorm: a text encoder of
    ``config.num_hidden_layers`` (23 of OpenCLIP's 24) does exactly that, so the layers past it are dropped.
    """
    out = {}
    for key, value in state.items():
        layer = RESBLOCK.match(key)
        if key in OPENCLIP_UNUSED or (layer and int(layer[1]) >= config.num_hidden_layers):
            continue
        new = key
        for old, replacement in OPENCLIP_RENAMES:
            new = new.replace(old, replacement)
        if new.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            base, kind = new.rsplit(".attn.in_proj_", 1)
            for name, part in zip(("q", "k", "v"), value.chunk(3), strict=True):
                out[f"{base}.self_attn.{name}_proj.{kind}"] = part
        else:
            out[new] = value
    return out


def text_encoder_to_openclip(state: StateDict) -> StateDict:
    """transformers' names to OpenCLIP's (the inverse of the rules above, for the layers given)."""
    out = {}
    for key, value in text_encoder_from_diffusers(state).items():
        for new, old in reversed(OPENCLIP_RENAMES):
            key = key.replace(old, new)
        out[key] = value
    for key in [k for k in out if ".self_attn.q_proj." in k]:
        base, kind = key.split(".self_attn.q_proj.")
        parts = [out.pop(f"{base}.self_attn.{n}_proj.{kind}") for n in ("q", "k", "v")]
        out[f"{base}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


# The UNet. CompVis numbers its blocks in one flat list per half (input_blocks.0..11, output_blocks.0..11);
# diffusers groups them by level. With L = layers_per_block, encoder level i holds input blocks
# 1 + i(L+1) + j (j < L: a ResNet at .0, its transformer at .1) and its downsampler at (i+1)(L+1); decoder
# level i holds output blocks i(L+1) + j (j ≤ L), its upsampler in the last of them, after the transformer.
RESNET_RENAMES = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]


def unet_prefixes(cfg) -> list[tuple[str, str]]:
    """(CompVis prefix, diffusers prefix) for every block of a UNet with config ``cfg``."""
    L, n = cfg.layers_per_block, len(cfg.block_out_channels)
    pairs = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("middle_block.0.", "mid_block.resnets.0."),
        ("middle_block.1.", "mid_block.attentions.0."),
        ("middle_block.2.", "mid_block.resnets.1."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ]
    for i, kind in enumerate(cfg.down_block_types):
        for j in range(L):
            k = 1 + i * (L + 1) + j
            pairs.append((f"input_blocks.{k}.0.", f"down_blocks.{i}.resnets.{j}."))
            if kind.startswith("CrossAttn"):
                pairs.append((f"input_blocks.{k}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{(i + 1) * (L + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i, kind in enumerate(cfg.up_block_types):
        attn = kind.startswith("CrossAttn")
        for j in range(L + 1):
            k = i * (L + 1) + j
            pairs.append((f"output_blocks.{k}.0.", f"up_blocks.{i}.resnets.{j}."))
            if attn:
                pairs.append((f"output_blocks.{k}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append(
                (f"output_blocks.{i * (L + 1) + L}.{2 if attn else 1}.conv.", f"up_blocks.{i}.upsamplers.0.conv.")
            )
    return pairs


def rename(state: StateDict, prefixes: list[tuple[str, str]], inner: list[tuple[str, str]]) -> StateDict:
    """Rename every key: replace its longest matching block prefix, then the layer name inside the block
    (``inner``). Keys that match no prefix stay as they are (and are reported as unexpected on loading)."""
    prefixes = sorted(prefixes, key=lambda p: -len(p[0]))

    def one(key: str) -> str:
        for old, new in prefixes:
            if key.startswith(old):
                rest = key[len(old) :]
                return new + next((n + rest[len(o) :] for o, n in inner if rest.startswith(o)), rest)
        return key

    return {one(k): v for k, v in state.items()}


def unet_from_compvis(state: StateDict, cfg) -> StateDict:
    return rename(state, unet_prefixes(cfg), RESNET_RENAMES)


def unet_to_compvis(state: StateDict, cfg) -> StateDict:
    """The inverse, with the ``model.diffusion_model.`` prefix: what a CompVis file would hold."""
    back = rename(state, [(new, old) for old, new in unet_prefixes(cfg)], [(new, old) for old, new in RESNET_RENAMES])
    return {LAYOUTS["unet"].compvis_prefix + k: v for k, v in back.items()}


def has_ema_weights(keys) -> bool:
    """An EMA copy of the UNet; files without one may still carry ``model_ema.decay`` and ``num_updates``."""
    return any(k.startswith("model_ema.diffusion_model") for k in keys)


def select_unet_weights(state: StateDict, ema: bool | None) -> StateDict:
    """Put a single file's EMA UNet weights in place of the trained ones (``ema`` True, or None and present).

    CompVis stores the EMA copy under ``model_ema.`` with the dots of the module path removed:
    ``model.diffusion_model.out.0.weight`` -> ``model_ema.diffusion_modelout0weight``.
    """
    prefix = LAYOUTS["unet"].compvis_prefix
    if ema is False or (ema is None and not has_ema_weights(state)):
        return state
    if not has_ema_weights(state):
        raise CheckpointError("unet: ema=True but this file holds no EMA weights (no model_ema.diffusion_model*)")
    out = dict(state)
    for key in state:
        if key.startswith(prefix):
            ema_key = "model_ema." + key[len("model.") :].replace(".", "")
            if ema_key not in state:
                raise CheckpointError(f"unet: the file's EMA weights are incomplete: {ema_key} is missing")
            out[key] = state[ema_key]
    return out


# The VAE. CompVis: encoder.down.i.block.j, a mid block of block_1/attn_1/block_2, decoder.up.i numbered
# from the smallest size up (diffusers numbers the decoder's up_blocks in the order they run: reversed).
# Its attention projections are 1×1 convs, (C, C, 1, 1); diffusers' are linear layers, (C, C).
VAE_RENAMES = [
    ("nin_shortcut.", "conv_shortcut."),
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def vae_prefixes(cfg) -> list[tuple[str, str]]:
    """(CompVis prefix, diffusers prefix) for every block of a VAE with config ``cfg``."""
    n = len(cfg.block_out_channels)
    pairs = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in."),
            (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0."),
            (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."),
            (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1."),
            (f"{part}.norm_out.", f"{part}.conv_norm_out."),
            (f"{part}.conv_out.", f"{part}.conv_out."),
        ]
    for i in range(n):
        for j in range(cfg.layers_per_block):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(cfg.layers_per_block + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"decoder.up.{n - 1 - i}.upsample.conv.", f"decoder.up_blocks.{i}.upsamplers.0.conv."))
    return pairs


def is_vae_attention_weight(key: str) -> bool:
    return ".attentions." in key and key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))


def vae_from_compvis(state: StateDict, cfg) -> StateDict:
    out = rename(state, vae_prefixes(cfg), VAE_RENAMES)
    return {k: v.flatten(1) if is_vae_attention_weight(k) and v.ndim == 4 else v for k, v in out.items()}


def vae_to_compvis(state: StateDict, cfg) -> StateDict:
    """The inverse, with the ``first_stage_model.`` prefix: what a CompVis file would hold."""
    state = {k: v[:, :, None, None] if is_vae_attention_weight(k) else v for k, v in state.items()}
    back = rename(state, [(new, old) for old, new in vae_prefixes(cfg)], [(new, old) for old, new in VAE_RENAMES])
    return {LAYOUTS["vae"].compvis_prefix + k: v for k, v in back.items()}


def vae_from_diffusers(state: StateDict) -> StateDict:
    """diffusers < 0.14 named the VAE's attention layers query/key/value/proj_attn."""
    legacy = [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
    out = {}
    for k, v in state.items():
        for old, new in legacy:
            k = k.replace(old, new)
        out[k] = v
    return out


FROM_DIFFUSERS: dict[str, Callable[[StateDict], StateDict]] = {
    "text_encoder": text_encoder_from_diffusers,
    "vae": vae_from_diffusers,
}
FROM_COMPVIS: dict[str, Callable[[StateDict, Any], StateDict]] = {
    "text_encoder": text_encoder_from_compvis,
    "unet": unet_from_compvis,
    "vae": vae_from_compvis,
}


def component_folder(path: Path, name: str) -> Path | None:
    """The diffusers folder of component ``name`` under ``path`` (a model folder or the subfolder itself)."""
    sub = path / LAYOUTS[name].folder
    if sub.is_dir():
        return sub
    if (path / "config.json").is_file() and any((path / f).is_file() for f in LAYOUTS[name].files):
        return path
    return None


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_component(
    name: str,
    path: str | Path,
    model_cls: type[nn.Module],
    config_cls: type,
    config=None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    state_filter: Callable[[StateDict], StateDict] | None = None,
) -> nn.Module:
    """Build component ``name`` and fill it from a diffusers folder or a CompVis single file.

    ``config`` overrides the folder's ``config.json``; for a single file it defaults to SD1.x (the config
    class's defaults). ``state_filter`` picks among alternatives a single file may hold (the UNet's EMA).
    """
    path = Path(path)
    layout = LAYOUTS[name]
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist; give a diffusers model folder or a single file")
    if path.is_dir():
        folder = component_folder(path, name)
        if folder is None:
            raise CheckpointError(
                f"{name}: {path} is neither a diffusers model folder (with {layout.folder}/) nor a "
                f"{layout.folder} folder (config.json + {layout.files[0]})"
            )
        if config is None:
            config = config_cls.from_json(folder / "config.json")
        file = next((folder / f for f in layout.files if (folder / f).is_file()), None)
        if file is None:
            raise CheckpointError(f"{name}: no weights in {folder}; expected one of {', '.join(layout.files)}")
        state = read_weights(file, dtype=dtype)
        state = FROM_DIFFUSERS.get(name, lambda s: s)(state)
        source = str(file)
    else:
        config = config_cls() if config is None else config
        # The UNet's filter may swap in the EMA copy, stored under model_ema.*: read that too; an SD 2.x file
        # holds its text encoder in OpenCLIP's layout instead.
        prefixes = (layout.compvis_prefix,) + (("model_ema.",) if state_filter is not None else ())
        prefixes += (OPENCLIP_PREFIX,) if name == "text_encoder" else ()
        state = read_weights(path, prefixes, dtype)
        if state_filter is not None:
            state = state_filter(state)
        openclip = strip_prefix(state, OPENCLIP_PREFIX)
        state = strip_prefix(state, layout.compvis_prefix)
        if state:
            state = FROM_COMPVIS[name](state, config)
        elif openclip:
            state = text_encoder_from_openclip(openclip, config)
        else:
            raise CheckpointError(
                f"{name}: {path} has no {layout.compvis_prefix}* tensors; it is not a CompVis Stable Diffusion "
                "checkpoint (or holds other components only)"
            )
        source = str(path)
    try:
        with torch.device("meta"):
            model = model_cls(config)
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError, AssertionError, IndexError) as e:
        raise CheckpointError(f"{name}: its config describes a network that cannot be built ({e}); check it") from e
    check_keys(name, source, model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def check_keys(name: str, source: str, model: nn.Module, state: StateDict, show: int = 5) -> None:
    """Raise one CheckpointError naming the first missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - show} more)" if len(keys) > show else ""
            problems.append(f"{label}: {', '.join(keys[:show])}{more}")
    if problems:
        raise CheckpointError(
            f"{name}: {source} does not fit the model's config — " + "; ".join(problems) + ". Check that this is "
            "a Stable Diffusion checkpoint of the family and version you meant, or pass the matching config."
        )


def tensor_specs(file: Path) -> StateDict:
    """Every tensor of a file as an empty tensor of its shape and dtype on the meta device.

    A .safetensors file is read from its header alone; a pickle has to be loaded.
    """
    if file.suffix != ".safetensors":
        return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in read_weights(file).items()}
    _, header = safetensors_header(file)
    return {
        k: torch.empty(spec["shape"], dtype=SAFETENSORS_DTYPES[spec["dtype"]], device="meta")
        for k, spec in header.items()
    }
