"""The book's conventions for figures, code and math (COURSE.md, "The book"), checked on every notebook.

Chapters: every cell that draws a figure is hidden on the site (``hide-input``) and carries a caption and
a name (myst-nb figure metadata), the text refers to each figure by number, and visible code lines fit
the text column. Chapters and solutions: figures are at most ``plotting.TEXT_WIDTH`` wide with at most
three panels per row, and no markup renders wrongly (``\\texttt{a\\_b}``, "(Eq. (3))").
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from coursepkg import plotting

from .helpers import ROOT

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
HIDDEN = {"hide-input", "remove-input", "remove-cell", "hide-cell"}
DRAWS = re.compile(r"\bsubplots\(|\bplt\.figure\(|\bplt\.show\(\)")
MAX_VISIBLE_LINE = 88


def _ids(paths):
    return [f"{p.parent.name}/{p.stem}" for p in paths]


def _cells(path: Path, kind: str):
    return [(i, c) for i, c in enumerate(nbformat.read(path, as_version=4).cells) if c.cell_type == kind]


def _draws(cell) -> bool:
    """Whether the cell shows a matplotlib figure (an animation shows HTML instead: it has no caption)."""
    return bool(DRAWS.search(cell.source)) and "to_jshtml" not in cell.source


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_figures_are_hidden_captioned_named_and_referred_to(path):
    text = "\n".join(c.source for _, c in _cells(path, "markdown"))
    names, problems = [], []
    for i, cell in _cells(path, "code"):
        if not _draws(cell) or {"remove-output", "remove-cell"} & set(cell.metadata.get("tags", [])):
            continue  # no figure on the site (a widget for live sessions keeps a static figure beside it)
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        if not set(cell.metadata.get("tags", [])) & HIDDEN:
            problems.append(f"cell {i} draws a figure but its code is not hidden (tag it hide-input)")
        if not str(figure.get("caption", "")).strip() or not figure.get("name"):
            problems.append(f"cell {i} draws a figure without a caption and a name (mystnb.figure metadata)")
            continue
        names.append(figure["name"])
        if f"{{numref}}`{figure['name']}`" not in text and not re.search(
                rf"\{{numref\}}`[^`<]*<{re.escape(figure['name'])}>`", text):
            problems.append(f"figure {figure['name']!r} (cell {i}) is never referred to with {{numref}}")
    assert len(names) == len(set(names)), f"figure names repeat: {sorted(names)}"
    assert not problems, "\n".join(problems)


def test_figure_names_are_unique_across_the_book():
    names = [c.metadata.get("mystnb", {}).get("figure", {}).get("name")
             for path in CHAPTERS for _, c in _cells(path, "code")]
    names = [n for n in names if n]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", CHAPTERS + SOLUTIONS, ids=_ids(CHAPTERS + SOLUTIONS))
def test_visible_code_fits_the_column(path):
    long = [f"cell {i} line {n}: {len(line)} characters"
            for i, cell in _cells(path, "code") if not set(cell.metadata.get("tags", [])) & HIDDEN
            for n, line in enumerate(cell.source.splitlines(), 1) if len(line) > MAX_VISIBLE_LINE]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("path", CHAPTERS + SOLUTIONS, ids=_ids(CHAPTERS + SOLUTIONS))
def test_figures_fit_the_column(path):
    problems = []
    for i, cell in _cells(path, "code"):
        for m in re.finditer(r"figsize=\(\s*([0-9.]+)", cell.source):
            if float(m.group(1)) > plotting.TEXT_WIDTH:
                problems.append(f"cell {i}: figsize {m.group(1)} in is wider than {plotting.TEXT_WIDTH} in")
        for m in re.finditer(r"subplots\(\s*(\d+)\s*,\s*(\d+)", cell.source):
            if int(m.group(2)) > plotting.MAX_COLUMNS:
                problems.append(f"cell {i}: {m.group(2)} panels in a row (at most {plotting.MAX_COLUMNS})")
        for m in re.finditer(r"fontsize\s*=\s*(\d+)", cell.source):
            if int(m.group(1)) < 10:
                problems.append(f"cell {i}: fontsize={m.group(1)} is smaller than the page's text")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CHAPTERS + SOLUTIONS, ids=_ids(CHAPTERS + SOLUTIONS))
def test_markup_that_renders_wrongly(path):
    problems = []
    for i, cell in _cells(path, "markdown"):
        if re.search(r"\\texttt\{[^}]*\\_", cell.source):
            problems.append(f"cell {i}: \\texttt{{..\\_..}} shows a backslash; write `code` outside math")
        if re.search(r"\(\s*(Eq\.\s*)?\{eq\}", cell.source):
            problems.append(f"cell {i}: {{eq}} renders its own parentheses: '(Eq. {{eq}}`x`)' shows '(Eq. (3))'")
    assert not problems, "\n".join(problems)
