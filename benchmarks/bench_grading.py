"""The batch grader on 40 chapter-02 submissions, one kernel at a time and two at a time.

    .venv/bin/python benchmarks/bench_grading.py [--n 40] [--jobs 1 2]

The submissions are made from ``solutions/02_latent_variables_em.ipynb``, as students would hand
them in: a quarter fully correct, a quarter left blank, and half with two answers correct and the
others blank or wrong (the M-step's covariances divided by N instead of N_k). The folder is
graded by :func:`coursepkg.instructor.batch.grade_folder` once per ``--jobs`` value; the script
checks the grades (every correct answer passes, no wrong or blank one does), then prints the wall
time, the time per submission, and the speed-up over the first ``--jobs`` value.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import nbformat

from coursepkg.instructor.batch import Limits, grade_folder
from coursepkg.instructor.generator import BEGIN, END

ROOT = Path(__file__).resolve().parents[1]
NAME = "02_latent_variables_em.ipynb"
ANSWERS = ["log_likelihood", "e_step", "m_step", "em"]


def _answer_cell(nb, name):
    return next(c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)


def make_submissions(folder: Path, n: int) -> dict[str, dict[str, bool]]:
    """Write ``n`` submissions into ``folder``; return which exercises each one should pass."""
    solution = nbformat.read(ROOT / "solutions" / NAME, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / NAME, as_version=4)
    expected = {}
    for k in range(n):
        nb = nbformat.read(ROOT / "exercises" / NAME, as_version=4)
        # em calls the student's own e_step and m_step, so a mixed submission never has em right
        right_ones = (ANSWERS, (), ("log_likelihood", "e_step"), ("log_likelihood", "m_step"))[k % 4]
        should = {}
        for name in ANSWERS:
            solved = "\n".join(line for line in _answer_cell(solution, name).source.splitlines()
                               if line.strip() not in (BEGIN, END))
            right = name in right_ones
            if right:
                _answer_cell(nb, name).source = solved
            elif k % 4 == 2 and name == "m_step":  # a typical mistake: covariances divided by N, not N_k
                wrong = solved.replace("/ nk[:, None, None]", "/ N")
                if wrong == solved:
                    raise SystemExit("the solution's m_step changed: update the benchmark's mistake")
                _answer_cell(nb, name).source = wrong
            else:
                _answer_cell(nb, name).source = _answer_cell(exercise, name).source
            should[f"02.{name}"] = right
        path = folder / f"student_{k:02d}_{NAME}"
        nbformat.write(nb, path)
        expected[path.name] = should
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="number of submissions (default: 40)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time (default: 1 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        subs = Path(tmp) / "submissions"
        subs.mkdir()
        expected = make_submissions(subs, args.n)
        print(f"{args.n} submissions of chapter 02 on {os.cpu_count()} CPU(s)")
        print(f"{'jobs':>4}  {'wall s':>8}  {'s / submission':>14}  {'speed-up':>8}")
        first = None
        for jobs in args.jobs:
            report = grade_folder(subs, Path(tmp) / f"grades_{jobs}.csv", jobs=jobs, limits=Limits(timeout=300))
            first = first or report.seconds
            print(f"{jobs:>4}  {report.seconds:8.1f}  {report.seconds / args.n:14.2f}  {first / report.seconds:8.2f}",
                  flush=True)
            got = {(r.submission, r.exercise): r.passed for r in report.rows}
            want = {(s, e): p for s, exercises in expected.items() for e, p in exercises.items()}
            if got != want or report.originals:
                wrong = sorted(k for k in want if got.get(k) != want[k])
                raise SystemExit(f"jobs={jobs}: unexpected grades for {wrong[:5]} (originals: {report.originals})")


if __name__ == "__main__":
    main()
