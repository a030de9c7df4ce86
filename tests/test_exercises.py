"""Both directions for every exercise: the solution passes its check, the blank exercise fails it.

Both notebooks are graded as submissions are (:mod:`coursepkg.instructor.batch`): the solution's
answer cells are matched to the exercise's and run in the rebuilt reference notebook, and the
verdicts come from the grader's own check cells. So this also proves that the grader credits a
correct notebook fully (without a flag) and a blank one not at all.
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


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_solution_passes_every_check(path):
    rows = grade_notebook(path, path.name, timeout=300)
    assert {r.exercise for r in rows} == set(notebook_check_ids(path))
    failed = [f"{r.exercise}: {r.status}: {r.message} {r.note}" for r in rows if r.status != "passed"]
    assert not failed, failed
    assert not [r.flags for r in rows if r.flags], "an honest solution is flagged"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_blank_exercise_fails_every_check(path):
    exercise = ROOT / "exercises" / path.name
    rows = grade_notebook(exercise, exercise.name, timeout=300)
    assert {r.exercise for r in rows} == set(notebook_check_ids(path))
    for r in rows:
        assert r.status == "not attempted" and not r.passed, (r.exercise, r.status, r.message, r.note)
        assert "not implemented" in r.message and not r.note and not r.flags  # the check ran, on the blank
