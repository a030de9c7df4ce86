"""The batch grader on a folder holding a correct, a wrong, a crashing, a looping and a broken submission."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import nbformat
import pytest

from .helpers import ROOT, file_digest

NAME = "01_probability_toolkit.ipynb"


def _variant(src, dst, edit):
    nb = nbformat.read(src, as_version=4)
    edit(nb)
    nbformat.write(nb, dst)


def _cell_defining(nb, name):
    return next(c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    solution = ROOT / "solutions" / NAME
    exercise = ROOT / "exercises" / NAME
    shutil.copy(solution, subs / "alice.ipynb")  # correct

    def wrong(nb):  # a typical mistake in one exercise, another one left blank
        cell = _cell_defining(nb, "kl_diag_gaussians")
        cell.source = cell.source.replace("(logvar_p - logvar_q", "(logvar_q - logvar_p")
        blank = _cell_defining(nbformat.read(exercise, as_version=4), "reparameterize")
        _cell_defining(nb, "reparameterize").source = blank.source

    _variant(solution, subs / "bob.ipynb", wrong)

    def crash(nb):  # the kernel dies in the middle of the notebook
        cell = _cell_defining(nb, "mean_and_stderr")
        cell.source = "import os\nos._exit(1)\n" + cell.source

    _variant(solution, subs / "carol.ipynb", crash)

    def loop(nb):
        _cell_defining(nb, "reparameterize").source += "\nwhile True:\n    pass\n"

    (subs / "late").mkdir()
    _variant(solution, subs / "late" / "dave.ipynb", loop)
    (subs / "eve.txt").write_text("my answers are in the email")
    (subs / "frank.ipynb").write_text("{ this is not json")
    before = {p: file_digest(p) for p in subs.rglob("*") if p.is_file()}
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "grade", str(subs), "--out", str(out), "--timeout", "15"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    return {"rows": rows, "before": before, "subs": subs, "stdout": proc.stdout}


def _rows(graded, submission):
    return {r["exercise"]: r for r in graded["rows"] if r["submission"] == submission}


def test_csv_has_the_documented_columns(graded):
    assert list(graded["rows"][0]) == ["submission", "exercise", "status", "passed", "message"]


def test_correct_submission_passes_everything(graded):
    rows = _rows(graded, "alice.ipynb")
    assert len(rows) == 5 and all(r["status"] == "passed" and r["passed"] == "True" for r in rows.values())
    assert "alice.ipynb: 5/5 passed" in graded["stdout"]


def test_wrong_submission_is_marked_with_hints(graded):
    rows = _rows(graded, "bob.ipynb")
    assert rows["01.kl_diag_gaussians"]["status"] == "failed"
    assert "upside down" in rows["01.kl_diag_gaussians"]["message"]
    assert rows["01.reparameterize"]["status"] == "failed"
    assert "not implemented" in rows["01.reparameterize"]["message"]
    assert rows["01.gaussian_log_prob"]["status"] == "passed"
    assert rows["01.gaussian_posterior"]["status"] == "passed"  # later exercises are still graded


def test_crashing_submission_is_reported(graded):
    rows = _rows(graded, "carol.ipynb")
    assert rows["01.gaussian_log_prob"]["status"] == "passed"  # graded before the crash
    assert rows["01.mean_and_stderr"]["status"] == "not run"
    assert "kernel died" in rows["01.mean_and_stderr"]["message"]
    assert "kernel died" in rows["01.gaussian_posterior"]["message"]


def test_looping_submission_times_out(graded):
    rows = _rows(graded, "late/dave.ipynb")
    assert rows["01.mean_and_stderr"]["status"] == "passed"
    assert rows["01.reparameterize"]["status"] == "not run"
    assert "timed out" in rows["01.reparameterize"]["message"]


def test_non_notebooks_get_a_row(graded):
    assert _rows(graded, "eve.txt")[""]["message"].startswith("not a notebook")
    assert _rows(graded, "frank.ipynb")[""]["status"] == "error"
    assert "not a notebook" in _rows(graded, "frank.ipynb")[""]["message"]


def test_submissions_are_never_modified(graded):
    after = {p: file_digest(p) for p in graded["subs"].rglob("*") if p.is_file()}
    assert after == graded["before"]


def test_missing_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "grade", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
