"""Pictures for people: the denoising trace as a grid, the notebooks' figures, and writing them to files.

Nothing here is part of Stable Diffusion itself; the notebooks import these helpers so that their cells show
the model's code, not plotting code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from PIL import Image


def trace_grid(trace, pipe, cell: int = 128, columns: int = 10) -> Image.Image:
    """Each step as a pair of thumbnails, x_t (first three latent channels as RGB) above the decoded
    predicted x0; ``columns`` steps to a row, in order."""
    F = torch.nn.functional
    pairs = []
    for step in trace:
        x0 = pipe.unet_latents_to_images(step.pred_x0[:1].to(pipe.device, pipe.dtype)).cpu()  # (1, 3, H, W) in [0, 1]
        lat = step.x_t[:1, :3].float()
        lat = (lat - lat.min()) / (lat.max() - lat.min() + 1e-8)  # stretched to [0, 1]
        size = (cell, round(cell * x0.shape[-1] / x0.shape[-2]))
        x0 = F.interpolate(x0, size=size, mode="bilinear", antialias=True)
        lat = F.interpolate(lat, size=size, mode="nearest")
        pairs.append(torch.cat([lat, x0], dim=-2)[0])  # (3, 2·cell, w)
    pairs += [torch.ones_like(pairs[0])] * (-len(pairs) % columns)  # pad the last row with white
    rows = [torch.cat(pairs[i : i + columns], dim=-1) for i in range(0, len(pairs), columns)]
    return pipe.to_pil(torch.cat(rows, dim=-2)[None].clamp(0, 1))[0]


def save_atomically(pictures: dict[Path, Image.Image]) -> None:
    """Write every picture to a temporary file beside its target, then rename them all: a failure part-way
    (a full disk, an unwritable folder) leaves neither half-written pictures nor some of the set."""
    written: list[tuple[str, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, image in pictures.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
            os.close(fd)
            written.append((tmp, path))
            image.save(tmp)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a picture gets the usual mode
        for tmp, path in written:
            os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.remove(tmp)


def caption_grid(pictures: list[Image.Image], captions: list[str], cell: int = 160, columns: int = 8) -> Image.Image:
    """Pictures in rows of ``columns``, each enlarged to ``cell`` pixels with its caption underneath."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    lines = [_wrap(c, font, cell - 8) for c in captions]
    text_h = 8 + 16 * max(len(w) for w in lines)
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    grid = Image.new("RGB", (cell * columns, (cell + text_h) * rows), "white")
    draw = ImageDraw.Draw(grid)
    for i, (picture, wrapped) in enumerate(zip(pictures, lines, strict=True)):
        x, y = i % columns * cell, i // columns * (cell + text_h)
        grid.paste(picture.resize((cell, cell), Image.NEAREST), (x, y))
        for j, line in enumerate(wrapped):
            draw.text((x + 4, y + cell + 4 + 16 * j), line, fill="black", font=font)
    return grid


def _wrap(text: str, font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if font.getlength(candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


# ---------------------------------------------------------------------------------------------------------
# The notebooks' figures


def pixels(x: torch.Tensor):
    """A picture tensor (3, H, W) or (1, 3, H, W) in [−1, 1] -> an (H, W, 3) array in [0, 1] for imshow."""
    x = x.detach().float().cpu().reshape(-1, *x.shape[-2:])[:3]
    return ((x + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def latent_rgb(z: torch.Tensor):
    """A latent (4, h, w) or (1, 4, h, w) -> its first three channels as an (h, w, 3) array, each channel
    stretched to [0, 1] (a latent has no colours: this only makes its structure visible)."""
    z = z.detach().float().cpu().reshape(-1, *z.shape[-2:])[:3]
    low, high = z.flatten(1).min(1).values[:, None, None], z.flatten(1).max(1).values[:, None, None]
    return ((z - low) / (high - low + 1e-8)).permute(1, 2, 0).numpy()


def show_row(pictures: list, titles: list[str] | None = None, size: float = 2.0, suptitle: str | None = None):
    """Arrays or PIL images side by side, without axes; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pictures), figsize=(size * len(pictures), size * 1.15), squeeze=False)
    for ax, picture, title in zip(axes[0], pictures, titles or [""] * len(pictures), strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def save_gif(frames: list[Image.Image], path: str | Path, ms: int = 120) -> Path:
    """An animated GIF of the frames (the last one held three times as long)."""
    path = Path(path)
    durations = [ms] * (len(frames) - 1) + [3 * ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def error_along_the_flow(report, first: int = 40, size: tuple[float, float] = (10, 3)):
    """The relative error of each stage of a ``reference.compare`` report, in data-flow order (log scale;
    exact equality drawn at the bottom), the first failing stage in red."""
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if not r.note][:first]
    floor = 1e-12  # where an exact 0 is drawn on the log axis
    fig, ax = plt.subplots(figsize=size)
    colours = ["tab:red" if r is report.first_failure else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), [max(r.rel, floor) for r in rows], color=colours, bottom=floor)
    ax.axhline(report.rtol, color="grey", linestyle="--", linewidth=1, label=f"rtol {report.rtol:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("‖a − b‖ / ‖a‖")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def curves(x, series: dict, xlabel: str, ylabel: str, logy: bool = False, size: tuple[float, float] = (7, 3)):
    """Several curves over the same x, labelled; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    for label, y in series.items():
        ax.plot(x, y, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig
