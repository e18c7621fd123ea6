"""What the benchmark scripts share: the same random weights on both sides, and peak-memory measurement."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch


def with_random_weights(reference: torch.nn.Module, minisd_cls: type, impl: str, device: str, dtype: torch.dtype):
    """``reference`` (built on the meta device) or minisd's ``minisd_cls()``, holding the same seeded random
    weights of a plausible scale (timings do not depend on the values)."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in reference.state_dict().items()}
    if impl == "diffusers":
        model = reference
    else:
        with torch.device("meta"):  # as the reference: no allocation before the weights arrive
            model = minisd_cls()
    model.load_state_dict(state, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def peak_memory_mib(fn: Callable[[], object], device: str = "cpu") -> float:
    """Growth of memory in use while ``fn()`` runs, at its peak, in MiB.

    CUDA: torch's peak allocated memory. CPU: the resident set sampled every 2 ms from /proc (ru_maxrss
    would still hold the peak of loading the weights).
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    page, peak, done = os.sysconf("SC_PAGE_SIZE"), [0], threading.Event()

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    base = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], rss()) - base) / 2**20
