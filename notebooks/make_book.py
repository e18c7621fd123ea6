"""``make book``: the executed notebooks as a static HTML site in site/, with an index in reading order."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

HERE = Path(__file__).parent


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    entries = []
    for path in sorted(HERE.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
        title = re.sub(r"^#\s*", "", nb.cells[0].source.splitlines()[0])
        entries.append(f'<li><a href="{path.stem}.html">{html.escape(title)}</a></li>')
    for gif in HERE.glob("*.gif"):
        (out / gif.name).write_bytes(gif.read_bytes())
    index = (
        "<!doctype html><meta charset='utf-8'><title>minisd: Stable Diffusion, step by step</title>"
        "<style>body{font-family:sans-serif;max-width:46em;margin:3em auto;line-height:1.5}</style>"
        "<h1>minisd: Stable Diffusion, step by step</h1>"
        "<p>Eight notebooks, to read in order. Each runs on minisd-tiny, the small Stable Diffusion that minisd "
        "trains and ships, and on real SD weights with one setting.</p>"
        f"<ol>{''.join(entries)}</ol>"
    )
    (out / "index.html").write_text(index, encoding="utf-8")
    print(f"wrote {out / 'index.html'} and {len(entries)} notebooks")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "site")
