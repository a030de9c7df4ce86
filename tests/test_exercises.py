"""Both directions for every exercise: the solution passes its check, the blank exercise fails it.

The notebooks are executed the way the batch grader executes submissions, so this also proves
that the grader credits a correct notebook fully and a blank one not at all.
"""

from __future__ import annotations

import pytest

from coursepkg.grading import list_checks
from coursepkg.instructor.batch import grade_notebook
from coursepkg.instructor.generator import generate_exercises

from .helpers import ROOT, notebook_check_ids, solution_notebooks

SOLUTIONS = solution_notebooks()
IDS = [p.stem for p in SOLUTIONS]


def test_there_are_solution_notebooks():
    assert SOLUTIONS, "solutions/ holds no notebook"


def test_exercises_are_in_sync_with_solutions():
    outcomes = generate_exercises(ROOT, check=True)
    stale = [f"{o.path.name}: {o.status}" for o in outcomes if o.status != "unchanged"]
    assert not stale, "exercises are out of date; run `python -m coursepkg exercises`: " + ", ".join(stale)
    names = {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    assert names == {p.name for p in SOLUTIONS}, "every solution has exactly one exercise notebook"


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_registered_check_has_a_check_cell(path):
    chapter = path.name[:2]
    registered = {i for i in list_checks() if i.startswith(chapter + ".")}
    called = notebook_check_ids(path)
    assert len(called) == len(set(called)), "an exercise is checked twice"
    assert set(called) == registered
    assert len(registered) >= 4, "each chapter has at least four graded exercises"


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_solution_passes_every_check(path):
    rows = grade_notebook(path, path.name, timeout=300)
    assert rows and all(r.exercise for r in rows)
    failed = [f"{r.exercise}: {r.status}: {r.message}" for r in rows if r.status != "passed"]
    assert not failed, failed


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_blank_exercise_fails_every_check(path):
    exercise = ROOT / "exercises" / path.name
    rows = grade_notebook(exercise, exercise.name, timeout=300)
    expected = set(notebook_check_ids(path))
    assert {r.exercise for r in rows} == expected
    for r in rows:
        assert r.status == "failed" and not r.passed, (r.exercise, r.status, r.message)
        assert "not implemented" in r.message
