"""The notebooks run from top to bottom and draw their figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    committed = nbformat.read(path, as_version=4)
    assert figures(committed) > 0, f"{path.name} was committed without its figures: run `make notebooks`"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert figures(nb) == figures(committed)


def test_the_book_builds(tmp_path):
    """`make book`: one HTML page per notebook, figures inline, and an index in reading order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_book", NOTEBOOKS[0].parent / "make_book.py")
    make_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_book)
    make_book.main(tmp_path)
    index = (tmp_path / "index.html").read_text()
    links = [path.stem for path in NOTEBOOKS]
    assert [index.index(f'href="{name}.html"') for name in links] == sorted(
        index.index(f'href="{name}.html"') for name in links
    )
    for name in links:
        assert "data:image/png;base64" in (tmp_path / f"{name}.html").read_text()


@pytest.fixture(scope="module")
def another_model(tmp_path_factory):
    """A Stable-Diffusion-family model of other widths, depths and VAE factor, in the diffusers layout."""
    from .tiny_sd import build_reference, save_diffusers

    return save_diffusers(build_reference(), tmp_path_factory.mktemp("another"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_other_weights_with_one_setting(path, tmp_path, another_model, monkeypatch):
    """MINISD_WEIGHTS points every notebook at another model, with no other change."""
    monkeypatch.setenv("MINISD_WEIGHTS", str(another_model))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
