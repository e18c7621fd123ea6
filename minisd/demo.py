"""``make demo``: a few pictures from captions, and the trace of one denoising, written to outputs/.

By default it runs minisd-tiny, the small model minisd trains on its shapes world and ships in
weights/minisd-tiny/; ``--weights`` (or a model in ./weights) runs real Stable Diffusion weights instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from .pipeline import load_pipeline
from .viz import caption_grid, save_atomically, trace_grid

CAPTIONS = (
    "a red circle on the left",
    "a small blue square at the top",
    "a large yellow triangle in the center",
    "a green circle above a purple square",
)


def run_demo(prompts: list[str], out: Path, weights: Path | None = None, seed: int = 0) -> list[Path]:
    """Generate each prompt with the pipeline's defaults; write demo.png (all of them) and trace.png (the first)."""
    pipe = load_pipeline(weights)
    print(f"model: {weights or 'minisd-tiny (weights/minisd-tiny)'}")
    pictures, start = [], time.perf_counter()
    for i, prompt in enumerate(prompts):
        result = pipe.text_to_image(prompt, seed=seed, trace=i == 0, progress=False)
        pictures.append(result.images[0])
        if i == 0:
            trace = trace_grid(result.trace, pipe)
            steps, size = len(result.timesteps), result.images[0].size
    seconds = time.perf_counter() - start
    paths = {out / "demo.png": caption_grid(pictures, prompts), out / "trace.png": trace}
    save_atomically(paths)
    print(f"{len(prompts)} pictures of {size[0]}×{size[1]}, {steps} steps of {type(pipe.scheduler).__name__} each, ")
    print(f"in {seconds:.1f} s; wrote {out / 'demo.png'} and {out / 'trace.png'} (per step of {prompts[0]!r}:")
    print("x_t above, the predicted x0 below)")
    return list(paths)
