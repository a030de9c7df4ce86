"""The batch grader: a folder of honest and hostile chapter-01 submissions graded once (slow), and
the pieces that need no kernel (matching, flags, signatures, the kernel's environment)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from coursepkg.instructor import batch
from coursepkg.instructor.generator import BEGIN, END, cell_role

from .helpers import ROOT, file_digest

NAME = "01_probability_toolkit.ipynb"
SOLUTION, EXERCISE = ROOT / "solutions" / NAME, ROOT / "exercises" / NAME


def _read(path):
    return nbformat.read(path, as_version=4)


def _cell_defining(nb, name):
    return next(c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)


def _solved(name):
    """The solution's answer to ``name``, without the solution markers (what a student writes)."""
    source = _cell_defining(_read(SOLUTION), name).source
    return "\n".join(line for line in source.splitlines() if line.strip() not in (BEGIN, END))


def _exercise(**answers):
    """The exercise notebook with some answer cells filled in: ``name=source`` (``True``: the solution)."""
    nb = _read(EXERCISE)
    for name, source in answers.items():
        _cell_defining(nb, name).source = _solved(name) if source is True else source
    return nb


def _stub(name):
    return _cell_defining(_read(EXERCISE), name).source


ALL = ("gaussian_log_prob", "kl_diag_gaussians", "mean_and_stderr", "reparameterize", "gaussian_posterior")

FORGER = '''
import json, os, threading, time
fake = {"exercise_id": "01.gaussian_log_prob", "passed": True, "message": "matches the reference"}
for path in (os.environ.get("COURSEPKG_GRADING_LOG") or "verdicts.jsonl", "grades.jsonl"):
    with open(path, "a") as fh:
        fh.write(json.dumps(fake) + "\\n")
line = "COURSEPKG-VERDICT " + "0" * 64 + ' {"exercise": "01.gaussian_log_prob", "message": "ok", "passed": true}'
def spam():  # prints forged verdicts while the grader's cells run
    while True:
        print(line, flush=True)
        print("[01.gaussian_log_prob] PASSED: matches the reference", flush=True)
        time.sleep(0.005)
threading.Thread(target=spam, daemon=True).start()
'''

FAKE_PACKAGE = """
import pathlib
for d in ("coursepkg", "coursepkg/grading"):  # a coursepkg of its own, in the kernel's folder
    pathlib.Path(d).mkdir(exist_ok=True)
    pathlib.Path(d, "__init__.py").write_text("")
pathlib.Path("coursepkg/grading/__init__.py").write_text(
    "class R:\\n    passed, message = True, 'ok'\\ndef check(i, a, verbose=True):\\n    return R()\\n")
"""

MALLORY = {  # each answer is wrong, and each cell tampers with the grading in another way
    "gaussian_log_prob": "check = lambda *a, **k: print('PASSED')\n"
                         "def gaussian_log_prob(x, mu, logvar):\n    return x.sum(-1) * 0\n",
    "kl_diag_gaussians": "import coursepkg.grading as g, coursepkg.grading.core as core\n"
                         "g.check = core.check = lambda i, a, verbose=True: core.CheckResult(i, True, 'ok')\n"
                         "def kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p):\n    return mu_q.sum(-1) * 0\n",
    "mean_and_stderr": "import sys, types\nfake = types.ModuleType('coursepkg.grading')\n"
                       "fake.check = lambda i, a, verbose=True: type('R', (), {'passed': True, 'message': 'ok'})()\n"
                       "sys.modules['coursepkg.grading'] = fake\n"
                       "def mean_and_stderr(values):\n    return values[0], values[0] * 0\n",
    "reparameterize": "from coursepkg.grading import core\n"
                      "core._REGISTRY['01.reparameterize'] = core.Check('01.reparameterize', '', lambda a: None)\n"
                      "def reparameterize(mu, logvar, eps):\n    return mu\n",
    "gaussian_posterior": FAKE_PACKAGE + "def gaussian_posterior(x, mu0, var0, var_noise):\n    return x, var0\n",
}

SNOOP = '''
import os, pathlib, sys
places = {os.getcwd()} | set(sys.argv)
places |= {p for v in os.environ.values() for p in v.split(os.pathsep) if p.startswith("/")}
for place in places:
    for p in (pathlib.Path(place), *pathlib.Path(place).glob("*")):
        if p.is_dir() and (p / "eve.txt").is_file():  # found the folder of submissions (eve.txt is in it)
            for nb in p.glob("*.ipynb"):
                nb.write_text("{}")
'''

HOG = "import torch\nhog = []\nfor _ in range(16):\n    hog.append(torch.ones(25_000_000, dtype=torch.float64))\n"
FLOOD = "while True:\n    print('x' * 10_000)\n"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    shutil.copy(SOLUTION, subs / "alice.ipynb")  # correct
    # a typical mistake in one exercise, another one left blank
    bob = _exercise(**{n: True for n in ALL if n != "reparameterize"})
    kl = _cell_defining(bob, "kl_diag_gaussians")
    assert "logvar_p - logvar_q" in kl.source, "the mistake below must change the solution's KL"
    kl.source = kl.source.replace("logvar_p - logvar_q", "logvar_q - logvar_p")
    nbformat.write(bob, subs / "bob.ipynb")
    # the kernel dies in the middle of the notebook
    nbformat.write(_exercise(**{**dict.fromkeys(ALL, True), "mean_and_stderr": "import os\nos._exit(1)\n"}),
                   subs / "carol.ipynb")
    (subs / "late").mkdir()
    loop = _solved("reparameterize") + "\nwhile True:\n    pass\n"
    nbformat.write(_exercise(**{**dict.fromkeys(ALL, True), "reparameterize": loop}), subs / "late" / "dave.ipynb")
    (subs / "eve.txt").write_text("my answers are in the email")
    (subs / "frank.ipynb").write_text("{ this is not json")
    # forged logs, forged printed verdicts, stored outputs that claim a pass
    forger = _exercise(gaussian_log_prob=FORGER + _stub("gaussian_log_prob"))
    for cell in forger.cells:
        if cell.cell_type == "code" and cell.source.startswith("check("):
            exercise_id = re.search(r'"(.+?)"', cell.source).group(1)
            cell.outputs = [nbformat.v4.new_output("stream", text=f"[{exercise_id}] PASSED: matches the reference\n")]
    nbformat.write(forger, subs / "forger.ipynb")
    nbformat.write(_exercise(**MALLORY), subs / "mallory.ipynb")
    # edits another submission (it knows where it is), then answers one exercise correctly
    meddle = f"import pathlib\npathlib.Path({str(subs / 'alice.ipynb')!r}).write_text('{{}}')\n"
    nbformat.write(_exercise(gaussian_log_prob=meddle + _solved("gaussian_log_prob")), subs / "aaron.ipynb")
    nbformat.write(_exercise(gaussian_log_prob=SNOOP + _stub("gaussian_log_prob")), subs / "snoop.ipynb")
    nbformat.write(_exercise(**{n: True for n in ALL if n != "gaussian_posterior"},
                             gaussian_posterior=HOG + _stub("gaussian_posterior")), subs / "hog.ipynb")
    nbformat.write(_exercise(gaussian_log_prob=True, mean_and_stderr=FLOOD + _stub("mean_and_stderr")),
                   subs / "flood.ipynb")
    # an answer written in an added cell, a check cell rewritten to print a pass, one honest answer
    adder = _exercise(mean_and_stderr=True)
    at = adder.cells.index(_cell_defining(adder, "gaussian_log_prob"))
    adder.cells.insert(at + 1, nbformat.v4.new_code_cell(_solved("gaussian_log_prob")))
    check_kl = next(c for c in adder.cells if c.cell_type == "code" and "01.kl_diag_gaussians" in c.source)
    check_kl.source = 'print("[01.kl_diag_gaussians] PASSED: matches the reference")'
    nbformat.write(adder, subs / "adder.ipynb")
    # a correct notebook whose cell ids and metadata were rewritten (by another front end)
    grace = _exercise(**{n: True for n in ALL})
    for i, cell in enumerate(grace.cells):
        cell["id"], cell.metadata = f"rewritten-{i}", {}
    grace.metadata = {"kernelspec": grace.metadata["kernelspec"]}
    nbformat.write(grace, subs / "grace.ipynb")

    before = {p: file_digest(p) for p in subs.rglob("*") if p.is_file()}
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    env = {**os.environ, "PWD": str(subs), "OLDPWD": str(subs), "MY_SUBMISSIONS": str(subs)}
    # as an instructor would: from inside the folder
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "grade", ".", "--out", str(out), "--jobs", "2",
                           "--timeout", "20", "--notebook-timeout", "120", "--memory", "1.5", "--max-output", "1"],
                          cwd=subs, env=env, capture_output=True, text=True, timeout=900)
    rows = list(csv.DictReader(out.open()))
    return {"rows": rows, "before": before, "subs": subs, "proc": proc}


def _rows(graded, submission):
    return {r["exercise"]: r for r in graded["rows"] if r["submission"] == submission}


@pytest.mark.slow
def test_csv_has_the_documented_columns(graded):
    assert list(graded["rows"][0]) == ["submission", "exercise", "status", "passed", "message", "note", "flags"]
    assert {r["status"] for r in graded["rows"]} <= {"passed", "failed", "not attempted", "not run", "error"}


@pytest.mark.slow
def test_correct_submissions_pass_everything(graded):
    for name in ("alice.ipynb", "grace.ipynb"):  # grace: ids and metadata rewritten, matched by content
        rows = _rows(graded, name)
        assert len(rows) == 5 and all(r["status"] == "passed" and r["passed"] == "True" for r in rows.values()), rows
        assert not any(r["flags"] for r in rows.values())
    assert "grace.ipynb: 5/5 passed\n" in graded["proc"].stdout
    assert not any(r["note"] for r in _rows(graded, "grace.ipynb").values())


@pytest.mark.slow
def test_wrong_submission_is_marked_with_hints(graded):
    rows = _rows(graded, "bob.ipynb")
    assert rows["01.kl_diag_gaussians"]["status"] == "failed"
    assert "upside down" in rows["01.kl_diag_gaussians"]["message"]
    assert rows["01.reparameterize"]["status"] == "not attempted"
    assert "left blank" in rows["01.reparameterize"]["message"]
    assert rows["01.gaussian_log_prob"]["status"] == "passed"
    assert rows["01.gaussian_posterior"]["status"] == "passed"  # later exercises are still graded
    assert "bob.ipynb: 3/5 passed (1 failed, 1 not attempted)" in graded["proc"].stdout


@pytest.mark.slow
def test_crashing_submission_is_reported(graded):
    rows = _rows(graded, "carol.ipynb")
    assert rows["01.gaussian_log_prob"]["status"] == "passed"  # graded before the crash
    assert rows["01.mean_and_stderr"]["status"] == "not run"
    assert "kernel died" in rows["01.mean_and_stderr"]["message"]
    assert "kernel died" in rows["01.gaussian_posterior"]["message"]
    assert "the answer cell of 01.mean_and_stderr" in rows["01.gaussian_posterior"]["note"]
    assert rows["01.mean_and_stderr"]["flags"] == "imports os"


@pytest.mark.slow
def test_looping_submission_times_out(graded):
    rows = _rows(graded, "late/dave.ipynb")
    assert rows["01.mean_and_stderr"]["status"] == "passed"
    assert rows["01.reparameterize"]["status"] == "not run"
    assert "timed out" in rows["01.reparameterize"]["message"] and "20 s" in rows["01.reparameterize"]["message"]


@pytest.mark.slow
def test_memory_and_output_limits_stop_the_kernel(graded):
    hog = _rows(graded, "hog.ipynb")
    assert [hog[f"01.{n}"]["status"] for n in ALL] == ["passed"] * 4 + ["not run"]
    assert "exceeded 1.5 GB of memory" in hog["01.gaussian_posterior"]["message"]
    flood = _rows(graded, "flood.ipynb")
    assert flood["01.gaussian_log_prob"]["status"] == "passed"
    assert flood["01.mean_and_stderr"]["status"] == "not run"
    assert "output exceeded 1 MB" in flood["01.mean_and_stderr"]["message"]


@pytest.mark.slow
def test_non_notebooks_get_a_row(graded):
    assert _rows(graded, "eve.txt")[""]["message"].startswith("not a notebook")
    assert _rows(graded, "frank.ipynb")[""]["status"] == "error"
    assert "not a notebook" in _rows(graded, "frank.ipynb")[""]["message"]


@pytest.mark.slow
def test_no_cheat_gains_a_grade(graded):
    for name in ("forger.ipynb", "mallory.ipynb", "snoop.ipynb"):
        rows = _rows(graded, name)
        assert len(rows) == 5 and not any(r["status"] == "passed" for r in rows.values()), (name, rows)
    forger = _rows(graded, "forger.ipynb")
    assert forger["01.gaussian_log_prob"]["status"] == "failed"  # its cell was changed, so it was attempted
    assert {"imports os", "imports threading", "open()"} <= set(forger["01.gaussian_log_prob"]["flags"].split("; "))
    mallory = _rows(graded, "mallory.ipynb")
    assert [mallory[f"01.{n}"]["status"] for n in ALL] == ["failed"] * 4 + ["not run"]
    assert "loaded from outside" in mallory["01.gaussian_posterior"]["note"]  # the coursepkg it wrote was refused
    assert "rebinds check" in mallory["01.gaussian_log_prob"]["flags"]
    assert "coursepkg.grading" in mallory["01.kl_diag_gaussians"]["flags"]
    assert "sys.modules" in mallory["01.mean_and_stderr"]["flags"]
    assert "imports pathlib" in mallory["01.gaussian_posterior"]["flags"]


@pytest.mark.slow
def test_added_and_changed_cells_are_reported_and_not_run(graded):
    rows = _rows(graded, "adder.ipynb")
    assert rows["01.gaussian_log_prob"]["status"] == "not attempted"  # its answer sits in an added cell
    assert rows["01.kl_diag_gaussians"]["status"] == "not attempted"  # the rewritten check cell claims a pass
    assert rows["01.mean_and_stderr"]["status"] == "passed"
    note = rows["01.mean_and_stderr"]["note"]
    assert "cells added outside the answer cells (not run): cell 7 ('def gaussian_log_prob" in note
    assert "locked cells changed" in note and "print(\"[01.kl_diag_gaussians] PASSED" in note


@pytest.mark.slow
def test_a_submission_cannot_change_another_ones_grade(graded):
    assert all(r["status"] == "passed" for r in _rows(graded, "alice.ipynb").values())  # graded from its copy
    assert _rows(graded, "aaron.ipynb")["01.gaussian_log_prob"]["status"] == "passed"
    assert "imports pathlib" in _rows(graded, "aaron.ipynb")["01.gaussian_log_prob"]["flags"]
    # the edit is detected and reported, in the CSV, the output and the exit status
    assert "original file changed while the submissions were graded" in _rows(graded, "alice.ipynb")[
        "01.gaussian_log_prob"]["note"]
    assert graded["proc"].returncode == 1, graded["proc"].stderr
    assert "1 file(s) of . changed while grading:\n  alice.ipynb: changed" in graded["proc"].stdout


@pytest.mark.slow
def test_no_other_file_changes(graded):
    """Nothing leads a kernel to the folder (the snoop searched its folder, argv and environment):
    the one file changed is the one a submission was told the path of."""
    after = {p: file_digest(p) for p in graded["subs"].rglob("*") if p.is_file()}
    assert after.keys() == graded["before"].keys()
    assert {p.name for p in after if after[p] != graded["before"][p]} == {"alice.ipynb"}


@pytest.mark.slow
def test_notebook_time_limit(tmp_path):
    nb = _exercise(gaussian_log_prob=True, kl_diag_gaussians="import time\nwhile True:\n    time.sleep(0.1)\n")
    nbformat.write(nb, tmp_path / NAME)
    rows = {r.exercise: r for r in batch.grade_notebook(
        tmp_path / NAME, limits=batch.Limits(timeout=60, notebook_timeout=20))}
    assert rows["01.gaussian_log_prob"].status == "passed"
    assert rows["01.kl_diag_gaussians"].status == "not run"
    assert "ran past the time limit of 20 s per notebook" in rows["01.kl_diag_gaussians"].message


def test_missing_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "grade", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a folder" in proc.stderr


@pytest.mark.parametrize("kwargs, name", [({"timeout": 0}, "timeout"), ({"memory_gb": -1}, "memory_gb"),
                                          ({"max_output_mb": "1"}, "max_output_mb"),
                                          ({"notebook_timeout": True}, "notebook_timeout")])
def test_limits_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        batch.Limits(**kwargs)


def test_bad_jobs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        batch.grade_folder(tmp_path, tmp_path / "g.csv", jobs=0)
    proc = subprocess.run([sys.executable, "-m", "coursepkg", "grade", str(tmp_path), "--memory", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "memory_gb" in proc.stderr


# --------------------------------------------------------------------------------------------------
# without a kernel
# --------------------------------------------------------------------------------------------------
def test_reference_knows_answer_and_check_cells():
    ref = batch.load_reference(EXERCISE)
    assert ref.exercises == [f"01.{n}" for n in ALL]
    for exercise, cells in ref.answers_of.items():
        assert len(cells) == 1 and ref.cells[cells[0]].role == "answer"
        assert ref.cells[cells[0] + 1].checks == ((exercise, exercise.split(".")[1]),)


def test_solution_is_matched_to_the_exercise_by_cell_id():
    ref = batch.load_reference(EXERCISE)
    match = batch.match_cells(ref, _read(SOLUTION))
    assert not match.notes
    for i, source in match.answers.items():
        assert BEGIN in source and ref.cells[i].role == "answer"
    assert len(match.answers) == 5


def test_matching_falls_back_on_content_and_reports_edits():
    ref = batch.load_reference(EXERCISE)
    nb = _exercise(reparameterize=True)
    for cell in nb.cells:
        cell["id"], cell.metadata = "x" + cell["id"], {}
    demo = next(c for c in nb.cells if c.source.startswith("gen = torch.Generator"))
    demo.source += "\nprint('mine')"  # a locked cell changed
    kl = _cell_defining(nb, "kl_diag_gaussians")
    nb.cells.insert(nb.cells.index(kl) + 1, nbformat.v4.new_code_cell("extra = 1"))  # a cell added
    match = batch.match_cells(ref, nb)
    answered = {ref.cells[i].source.split("(")[0]: s for i, s in match.answers.items()}
    assert answered["def reparameterize"] == _solved("reparameterize")
    assert len(match.answers) == 5
    assert any("locked cells changed" in n and "gen = torch.Generator" in n for n in match.notes)
    assert any("cells added" in n and "'extra = 1'" in n for n in match.notes)


def test_every_exercise_cell_is_marked():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        for cell in _read(path).cells:
            if cell.cell_type == "code":
                role, _ = cell_role(cell)
                assert (role == "answer") == ("raise NotImplementedError()" in cell.source), (path.name, cell.source)


def _answers_of_solutions():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        ref = batch.load_reference(ROOT / "exercises" / path.name)
        for source in batch.match_cells(ref, _read(path)).answers.values():
            yield path.name, ref, source


def test_honest_answers_raise_no_flag():
    seen = 0
    for name, ref, source in _answers_of_solutions():
        assert batch.answer_flags(source, ref.module_names) == [], (name, source)
        seen += 1
    assert seen >= 20


@pytest.mark.parametrize("source, flag", [
    ("import os", "imports os"), ("from pathlib import Path", "imports pathlib"), ("open('x')", "open()"),
    ("import sys\nsys.modules.pop('coursepkg')", "sys.modules"), ("import sys\nsys.settrace(None)", "sys.settrace"),
    ("__builtins__['len'] = None", "__builtins__"), ("import builtins", "imports builtins"),
    ("check = print", "rebinds check"), ("def check(*a):\n    pass", "rebinds check"),
    ("from coursepkg.grading import check as c", "imports coursepkg.grading"),
    ("import coursepkg\ncoursepkg.grading.check = print", "coursepkg.grading"),
    ("torch.allclose = lambda *a, **k: True", "assigns torch.allclose"),
    ("get_ipython().events.register('pre_run_cell', print)", "get_ipython()"),
    ("!ls /", "get_ipython()"), ("globals()['x'] = 1", "globals()"), ("eval('1')", "eval()"),
    ("import inspect", "imports inspect"), ("import gc", "imports gc"), ("import ctypes", "imports ctypes"),
    ("import importlib", "imports importlib"), ("import subprocess", "imports subprocess"),
    ("import shutil", "imports shutil"), ("def f():\n    return f.__globals__", "introspection (__globals__)"),
])
def test_flags_name_what_the_answer_touches(source, flag):
    assert flag in batch.answer_flags(source)


def test_verdicts_need_this_cells_signature():
    secret = "ab" * 32
    body = json.dumps({"exercise": "01.x", "message": "ok", "passed": True}, sort_keys=True)
    good = hmac.new(bytes.fromhex(secret), body.encode(), hashlib.sha256).hexdigest()
    cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": f"COURSEPKG-VERDICT {good} {body}\n"}]}
    assert batch.read_verdict(cell, "01.x", secret)["passed"] is True
    assert batch.read_verdict(cell, "01.y", secret) is None  # signed, but for another exercise
    assert batch.read_verdict(cell, "01.x", "cd" * 32) is None  # another cell's secret
    forged = {"outputs": [{"output_type": "stream", "name": "stdout", "text": f"COURSEPKG-VERDICT {'0' * 64} {body}"}]}
    assert batch.read_verdict(forged, "01.x", secret) is None


def test_grader_cells_replace_check_cells():
    ref = batch.load_reference(EXERCISE)
    plan = batch.build_notebook(ref, {})
    graders = [(c.source, p) for c, p in zip(plan.nb.cells, plan.cells, strict=True) if p[0] == "grader"]
    assert [p[2] for _, p in graders] == ref.exercises
    assert len({p[3] for _, p in graders}) == 5  # one secret per cell
    for source, p in graders:
        assert p[3] in source and "sys.modules" in source
    assert not any(s.startswith("check(") for s in (c.source for c in plan.nb.cells))


def test_kernel_environment_hides_the_folder(tmp_path, monkeypatch):
    subs = tmp_path / "subs"
    subs.mkdir()
    monkeypatch.setenv("PWD", str(subs))
    monkeypatch.setenv("OLDPWD", str(subs))
    monkeypatch.setenv("WHERE", f"/x{os.pathsep}{subs}")
    monkeypatch.setenv("PATH", f"{subs}{os.pathsep}{os.environ['PATH']}")
    env = batch.kernel_env("/tmp/kernel-own", [subs])
    assert not any(str(subs) in v for v in env.values())
    assert env["PWD"] == "/tmp/kernel-own" and "OLDPWD" not in env and "WHERE" not in env
    assert env["PATH"] == os.environ["PATH"].split(os.pathsep, 1)[1]
    assert env["COURSEPKG_PROFILE"] in ("quick", os.environ.get("COURSEPKG_PROFILE"))

