"""Batch grading for instructors: ``python -m coursepkg grade SUBMISSIONS_DIR --out grades.csv``.

Each submitted notebook is read (never modified), executed in a fresh kernel inside a temporary
folder, with a time limit per cell; the verdicts that :func:`coursepkg.grading.check` logs during
the run are collected. The CSV has one row per (submission, exercise):

``submission, exercise, status, passed, message``

``status`` is ``passed``, ``failed`` (the check ran and rejected the answer), ``not run`` (the check
cell raised, was deleted, or was never reached because the notebook timed out or its kernel died)
or ``error`` (the file is not a readable notebook, or has no exercises). A submission that loops
forever, crashes its kernel or is not a notebook gets rows that say so; the others are still graded.

The exercises expected of a submission are the registered checks of its chapter (from the
notebook's metadata or its ``NN_`` file-name prefix), plus any check it calls.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from coursepkg.grading import core as grading

CHECK_CALL = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+\.[A-Za-z0-9_]+)["']""")
FIELDS = ["submission", "exercise", "status", "passed", "message"]


@dataclass
class Row:
    submission: str
    exercise: str
    status: str
    passed: bool
    message: str


def _chapter(path: Path, nb: dict) -> str | None:
    source = (nb.get("metadata", {}).get("coursepkg", {}) or {}).get("generated_from", "")
    for name in (Path(source).name, path.name):
        m = re.match(r"(\d\d)_", name)
        if m:
            return m.group(1)
    return None


def expected_exercises(path: Path, nb: dict) -> list[str]:
    """The exercise ids a submission is graded on, in the order they appear."""
    called = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            called += CHECK_CALL.findall("".join(cell.get("source", "")))
    chapter = _chapter(path, nb)
    registered = [i for i in grading.list_checks() if chapter and i.split(".")[0] == chapter]
    seen, ids = set(), []
    for i in called + registered:
        if i not in seen:
            seen.add(i)
            ids.append(i)
    return ids


def _cell_error(cell: dict) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {' '.join(str(out.get('evalue', '')).split())[:200]}"
    return None


def grade_notebook(path: Path, name: str, *, timeout: int = 120, kernel_name: str = "python3") -> list[Row]:
    """Execute one submission and return its rows (never raises for a bad submission)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if path.suffix != ".ipynb":
        return [Row(name, "", "error", False, "not a notebook: expected a .ipynb file")]
    try:
        nb = nbformat.read(path, as_version=4)  # a copy in memory: the file is never written
        nbformat.validate(nb)
    except Exception as err:  # JSON errors, schema errors, undecodable bytes
        return [Row(name, "", "error", False,
                    f"not a notebook: could not be read as a Jupyter notebook ({type(err).__name__})")]
    ids = expected_exercises(path, nb)
    if not ids:
        return [Row(name, "", "error", False, "no exercise checks found in this notebook")]
    for cell in nb.cells:  # grade what the student wrote, not what their outputs claim
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None

    stopped, current = None, {"index": -1}
    with tempfile.TemporaryDirectory(prefix="coursepkg-grade-") as tmp:
        log = Path(tmp) / "verdicts.jsonl"
        env_before = os.environ.get(grading.LOG_ENV)
        os.environ[grading.LOG_ENV] = str(log)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                                    interrupt_on_timeout=False, resources={"metadata": {"path": tmp}})
            client.on_cell_start = lambda cell, cell_index: current.update(index=cell_index)
            client.execute()
        except CellTimeoutError:
            stopped = f"the notebook timed out: cell {current['index']} ran longer than {timeout} s"
        except DeadKernelError:
            stopped = f"the kernel died while running cell {current['index']}"
        except Exception as err:  # a kernel that cannot start, a broken cell structure...
            stopped = f"the notebook could not be executed: {type(err).__name__}: {str(err)[:200]}"
        finally:
            if env_before is None:
                os.environ.pop(grading.LOG_ENV, None)
            else:
                os.environ[grading.LOG_ENV] = env_before
        verdicts = {}
        if log.exists():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    verdicts[rec["exercise_id"]] = rec
                except (ValueError, KeyError):
                    continue

    check_cells = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for i in CHECK_CALL.findall(cell.source):
                check_cells.setdefault(i, (index, cell))
    rows = []
    for i in ids:
        if i in verdicts:
            rec = verdicts[i]
            rows.append(Row(name, i, "passed" if rec["passed"] else "failed", bool(rec["passed"]), rec["message"]))
            continue
        if i not in check_cells:
            msg = "the check cell for this exercise is missing from the submission"
        elif stopped and check_cells[i][0] >= current["index"]:
            msg = f"not reached: {stopped}"
        elif _cell_error(check_cells[i][1]):
            msg = f"the check cell raised {_cell_error(check_cells[i][1])}"
        else:
            msg = "the check did not run"
        rows.append(Row(name, i, "not run", False, msg))
    if stopped and all(r.status != "not run" for r in rows):
        rows.append(Row(name, "", "error", False, stopped))
    return rows


def grade_folder(submissions: str | Path, out: str | Path, *, timeout: int = 120,
                 kernel_name: str = "python3") -> list[Row]:
    """Grade every file in ``submissions`` (recursively) and write the CSV to ``out``."""
    root = Path(submissions)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of submissions")
    out = Path(out)
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts)
    if out.resolve().parent == root.resolve():
        files = [p for p in files if p.resolve() != out.resolve()]
    rows: list[Row] = []
    for path in files:
        rows += grade_notebook(path, str(path.relative_to(root)), timeout=timeout, kernel_name=kernel_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return rows
