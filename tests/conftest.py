"""Shared test helpers. diffusers and transformers are the numerical reference; they are imported here only."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
if os.environ.get("PYTEST_XDIST_WORKER"):  # share the cores between workers: oversubscribed threads crawl
    THREADS = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # and the command-line tests' subprocesses


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add seeded noise to every floating tensor, so that no weight keeps its default init.

    Default inits hide mistakes: a LayerNorm at weight 1 / bias 0 looks the same whether or not it is
    applied in the right place.
    """
    g = torch.Generator().manual_seed(seed)
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)
    return module


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def sd_v1_keys() -> dict[str, list[int]]:
    """Every key and shape of a real SD v1 CompVis checkpoint (copied from the workplace's reference data)."""
    return json.loads((DATA / "sd-v1-keys.json").read_text())["keys"]


@pytest.fixture(scope="session")
def shipped_vocab_folder(tmp_path_factory) -> Path:
    """The shipped OpenAI vocabulary written as a diffusers/transformers ``tokenizer/`` folder."""
    from minisd.tokenizer import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    CLIPTokenizer.from_openai_vocab().save(folder)
    return folder


@pytest.fixture(scope="session")
def hf_tokenizer(shipped_vocab_folder):
    from transformers import CLIPTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPTokenizer.from_pretrained(shipped_vocab_folder)
