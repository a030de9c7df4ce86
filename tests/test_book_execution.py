"""Executing the chapters into the book build's cache (``python -m coursepkg execute-book``): a chapter is
executed as the build would execute it, a failing one is a clear error, and the build's own cache lookup
finds what was stored."""

from __future__ import annotations

import nbformat
import pytest

from coursepkg.instructor.book import ChapterError, cache_path, chapters, execute_book, execute_chapter


def _root(tmp_path, cells: dict[str, list[str]]):
    (tmp_path / "_config.yml").write_text("execute:\n  timeout: 60\n", encoding="utf-8")
    (tmp_path / "book").mkdir()
    for name, sources in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / "book" / f"{name}.ipynb")
    return tmp_path


def test_paths_and_argument_errors(tmp_path):
    root = _root(tmp_path, {"01_a": ["1"], "02_b": ["2"]})
    assert cache_path(root) == root / "_build" / ".jupyter_cache"
    assert [p.name for p in chapters(root)] == ["01_a.ipynb", "02_b.ipynb"]
    (root / "_config.yml").write_text("execute:\n  cache: elsewhere/cache\n", encoding="utf-8")
    assert cache_path(root) == (root / "elsewhere" / "cache").resolve()
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        execute_book(root, jobs=0)
    with pytest.raises(ValueError, match="no chapter named 03_c"):
        execute_book(root, names=["03_c"])


@pytest.mark.slow
def test_chapters_run_in_parallel_into_the_cache_the_build_reads(tmp_path):
    from jupyter_cache import get_cache

    root = _root(tmp_path, {"01_a": ["x = 21", "print(2 * x)"], "02_b": ["import os", "print(os.getcwd())"]})
    runs = {r.path.name: r for r in execute_book(root, jobs=2)}
    assert not any(r.cached for r in runs.values())
    cache = get_cache(str(cache_path(root)))
    for name in ("01_a", "02_b"):  # what myst-nb does: look the notebook up, merge the stored outputs in
        _, merged = cache.merge_match_into_notebook(nbformat.read(root / "book" / f"{name}.ipynb", as_version=4))
        outputs = [o.get("text", "") for c in merged.cells for o in c.get("outputs", [])]
        assert outputs == (["42\n"] if name == "01_a" else [f"{root / 'book'}\n"])  # cwd: the chapter's folder
    again = execute_chapter(root / "book" / "01_a.ipynb", root=root)
    assert again.cached and again.seconds == 0.0
    assert not execute_chapter(root / "book" / "01_a.ipynb", root=root, force=True).cached


@pytest.mark.slow
def test_a_failing_chapter_is_a_clear_error_and_is_not_cached(tmp_path):
    from jupyter_cache import get_cache

    root = _root(tmp_path, {"01_bad": ["assert 1 + 1 == 3, 'the claim in the prose is wrong'"]})
    expected = "(?s)01_bad.ipynb failed to execute.*AssertionError: the claim in the prose is wrong"
    with pytest.raises(ChapterError, match=expected):
        execute_chapter(root / "book" / "01_bad.ipynb", root=root)
    with pytest.raises(KeyError):
        get_cache(str(cache_path(root))).match_cache_notebook(
            nbformat.read(root / "book" / "01_bad.ipynb", as_version=4))
