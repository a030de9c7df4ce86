"""The exercise generator, the install cell, and the storage rules for notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nbformat
import pytest

from coursepkg.instructor.generator import (
    BEGIN,
    END,
    GeneratorError,
    cell_role,
    content_hash,
    generate_exercises,
    install_cell_source,
    repository,
    sync_install_cells,
)

from .helpers import ROOT, file_digest


def _mini_repo(tmp_path, solution_cells):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "solutions").mkdir()
    nb = nbformat.v4.new_notebook(cells=solution_cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "solutions" / "01_demo.ipynb")
    return tmp_path


def _solution_cells():
    code = nbformat.v4.new_code_cell
    md = nbformat.v4.new_markdown_cell
    solved = code(f"def f(x):\n    \"\"\"Double x.\"\"\"\n    {BEGIN}\n    y = 2 * x\n    return y\n    {END}\n"
                  "\nvalue = f(3)")
    solved.outputs = [nbformat.v4.new_output("stream", text="6\n")]
    solved.execution_count = 4
    only = code("print('solution only')")
    only.metadata["tags"] = ["solution-only"]
    return [md("# Demo"), solved, only,
            md("Why?\n\n<!-- BEGIN SOLUTION -->Because.<!-- END SOLUTION -->"), code('check("01.x", f)')]


def _read(path):
    return nbformat.read(path, as_version=4)


def test_generator_replaces_solutions_and_clears_outputs(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    [outcome] = generate_exercises(root)
    assert outcome.status == "written"
    nb = _read(root / "exercises" / "01_demo.ipynb")
    sources = [c.source for c in nb.cells]
    assert sources[0] == install_cell_source(repository(root))
    assert "colab.research.google.com/github/" in sources[1] and "exercises/01_demo.ipynb" in sources[1]
    body = "\n".join(sources)
    assert "    # YOUR CODE HERE\n    raise NotImplementedError()" in body  # at the marker's indentation
    assert "y = 2 * x" not in body and BEGIN not in body and END not in body
    assert '"""Double x."""' in body and "value = f(3)" in body  # code outside the markers is kept
    assert "solution only" not in body
    assert "Because." not in body and "*YOUR ANSWER HERE*" in body
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    # the solution is untouched
    assert "y = 2 * x" in _read(root / "solutions" / "01_demo.ipynb").cells[1].source


def test_generator_marks_answer_and_locked_cells(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    generate_exercises(root)
    solution = _read(root / "solutions" / "01_demo.ipynb")
    nb = _read(root / "exercises" / "01_demo.ipynb")
    roles = [cell_role(c) for c in nb.cells]
    # install, badge, "# Demo", the answer, the markdown answer, the check ("solution only" is dropped)
    assert roles == [("locked", "install-coursepkg"), None, None, ("answer", solution.cells[1].id),
                     ("answer", solution.cells[3].id), ("locked", solution.cells[4].id)]
    assert "NotImplementedError" in nb.cells[3].source
    # the marks are what the student's front end keeps: metadata, not cell ids
    assert nb.cells[3].metadata["coursepkg"] == {"answer": solution.cells[1].id}
    # and they are stable: regenerating after a change elsewhere keeps them
    solution.cells[0].source = "# Demo, revised"
    nbformat.write(solution, root / "solutions" / "01_demo.ipynb")
    generate_exercises(root)
    assert [cell_role(c) for c in _read(root / "exercises" / "01_demo.ipynb").cells] == roles


def test_generator_is_idempotent_and_check_detects_staleness(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    generate_exercises(root)
    target = root / "exercises" / "01_demo.ipynb"
    digest = file_digest(target)
    assert [o.status for o in generate_exercises(root)] == ["unchanged"]
    assert file_digest(target) == digest
    assert [o.status for o in generate_exercises(root, check=True)] == ["unchanged"]
    # the solution changes: --check reports it and writes nothing
    sol = _read(root / "solutions" / "01_demo.ipynb")
    sol.cells[0].source = "# Demo, revised"
    nbformat.write(sol, root / "solutions" / "01_demo.ipynb")
    assert [o.status for o in generate_exercises(root, check=True)] == ["out of date"]
    assert file_digest(target) == digest
    # an unedited exercise is regenerated without --force
    assert [o.status for o in generate_exercises(root)] == ["written"]
    assert _read(target).cells[2].source == "# Demo, revised"


def test_generator_refuses_to_overwrite_an_edited_exercise(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    generate_exercises(root)
    target = root / "exercises" / "01_demo.ipynb"
    nb = _read(target)
    nb.cells[3].source = nb.cells[3].source.replace("raise NotImplementedError()", "return 2 * x  # my answer")
    nbformat.write(nb, target)
    edited = file_digest(target)
    sol = _read(root / "solutions" / "01_demo.ipynb")
    sol.cells[0].source = "# Demo, revised"
    nbformat.write(sol, root / "solutions" / "01_demo.ipynb")

    [outcome] = generate_exercises(root)
    assert outcome.status == "refused" and "--force" in outcome.detail
    assert file_digest(target) == edited  # the student's work is intact
    # the CLI says so and exits non-zero
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "exercises", "--root", str(root)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "refused" in proc.stderr
    assert file_digest(target) == edited
    # --force overwrites
    [outcome] = generate_exercises(root, force=True)
    assert outcome.status == "written" and "my answer" not in target.read_text()


def test_generator_refuses_a_file_it_did_not_write(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    (root / "exercises").mkdir()
    target = root / "exercises" / "01_demo.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("mine")]), target)
    assert [o.status for o in generate_exercises(root)] == ["refused"]
    target.write_text("{ not json")
    [outcome] = generate_exercises(root)
    assert outcome.status == "refused" and "cannot be read" in outcome.detail
    assert target.read_text() == "{ not json"


def test_running_an_exercise_counts_as_an_edit(tmp_path):
    root = _mini_repo(tmp_path, _solution_cells())
    generate_exercises(root)
    target = root / "exercises" / "01_demo.ipynb"
    nb = _read(target)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="ran\n")]
    nbformat.write(nb, target)
    assert content_hash(nb) != nb.metadata["coursepkg"]["content_hash"]
    sol = _read(root / "solutions" / "01_demo.ipynb")
    sol.cells[0].source = "# changed"
    nbformat.write(sol, root / "solutions" / "01_demo.ipynb")
    assert [o.status for o in generate_exercises(root)] == ["refused"]


@pytest.mark.parametrize("source, message", [
    (f"{BEGIN}\nx = 1\n", "never closed"),
    (f"x = 1\n{END}\n", "without a matching"),
    (f"{BEGIN}\n{BEGIN}\n{END}\n", "inside another"),
    ("x = 1\n", "nothing for the student"),
])
def test_generator_rejects_broken_markers(tmp_path, source, message):
    root = _mini_repo(tmp_path, [nbformat.v4.new_code_cell(source)])
    with pytest.raises(GeneratorError, match=message):
        generate_exercises(root)
    assert not (root / "exercises" / "01_demo.ipynb").exists()


def test_install_cells_follow_config(tmp_path):
    root = _mini_repo(tmp_path, [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("x = 1")])
    (root / "book").mkdir()
    changed = sync_install_cells(root, check=True)
    assert [p.name for p in changed] == ["01_demo.ipynb"]
    assert _read(root / "solutions" / "01_demo.ipynb").cells[0].cell_type == "markdown"  # check wrote nothing
    sync_install_cells(root)
    nb = _read(root / "solutions" / "01_demo.ipynb")
    assert nb.cells[0].source == install_cell_source(repository(root)) and len(nb.cells) == 3
    assert sync_install_cells(root, check=True) == []
    # the repository URL is read from _config.yml, the one place that names it
    cfg = (root / "_config.yml").read_text().replace(repository(root).url, "https://github.com/someone/fork")
    (root / "_config.yml").write_text(cfg)
    assert sync_install_cells(root, check=True)
    sync_install_cells(root)
    first = _read(root / "solutions" / "01_demo.ipynb").cells[0]
    assert "git+https://github.com/someone/fork@" in first.source
    assert len(_read(root / "solutions" / "01_demo.ipynb").cells) == 3


def test_repository_notebooks_have_the_install_cell_first():
    assert sync_install_cells(ROOT, check=True) == [], "run `python -m coursepkg install-cells`"
    for folder in ("book", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            first = _read(path).cells[0]
            assert first.source == install_cell_source(repository(ROOT)), path
            assert first.metadata.get("tags") == ["remove-cell"]


@pytest.mark.parametrize("folder", ["book", "exercises"])
def test_chapters_and_exercises_are_stored_without_outputs(folder):
    paths = sorted((ROOT / folder).glob("*.ipynb"))
    assert paths
    for path in paths:
        for i, cell in enumerate(_read(path).cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}, cell {i} has outputs"


def test_solutions_are_stored_with_outputs():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        code = [c for c in _read(path).cells[1:] if c.cell_type == "code"]
        assert code and all(c.execution_count is not None for c in code), f"{path.name}: run `make solutions`"


def test_every_notebook_is_in_the_table_of_contents():
    import yaml

    toc = (ROOT / "_toc.yml").read_text()
    yaml.safe_load(toc)
    for folder in ("book", "exercises", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            assert f"file: {folder}/{path.stem}\n" in toc, f"{folder}/{path.name} is not in _toc.yml"


def test_solutions_title_becomes_exercises_title(tmp_path):
    cells = _solution_cells()
    cells[0] = nbformat.v4.new_markdown_cell("# Solutions 01: the demo\n\nSolutions are not the topic here.")
    root = _mini_repo(tmp_path, cells)
    generate_exercises(root)
    nb = _read(root / "exercises" / "01_demo.ipynb")
    titles = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# ")]
    assert titles == ["# Exercises 01: the demo\n\nSolutions are not the topic here."]


def test_every_solution_and_exercise_is_titled_by_its_part():
    for folder, word in (("solutions", "Solutions"), ("exercises", "Exercises")):
        for path in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
            nb = _read(path)
            title = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# "))
            assert title.startswith(f"# {word} {path.name[:2]}: "), f"{path.name}: {title.splitlines()[0]!r}"


def test_install_cell_that_cannot_install_says_what_it_tried_and_what_to_do(tmp_path):
    from coursepkg.instructor.generator import Repository

    missing = tmp_path / "no-such-repository"
    source = install_cell_source(Repository(f"file://{missing}", "main"))
    script = tmp_path / "install_cell.py"
    script.write_text(source)
    # -S: no site-packages, so coursepkg is "missing" and the cell runs pip, which cannot clone the URL
    run = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()
    assert "CalledProcessError" not in run.stderr
    assert any(line.startswith("RuntimeError: could not install the course package") for line in last)
    assert str(missing) in run.stderr  # what was tried
    assert "Install it by hand" in last[-1] and "pip install -e ." in last[-1]


def test_kernels_run_on_an_ipykernel_without_the_lost_wakeup_hang():
    # ipykernel 7 can leave an execute_request unread (ipython/ipykernel issue 1554): constraints.txt
    # keeps the Makefile's and CI's environment on ipykernel 6
    from importlib.metadata import version

    assert "ipykernel>=6.29,<7" in (ROOT / "constraints.txt").read_text()
    assert int(version("ipykernel").split(".")[0]) == 6
