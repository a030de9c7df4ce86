"""Command line: ``python -m coursepkg {exercises,install-cells,grade,execute,execute-book,checks}``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursepkg",
                                     description="Tools of the course 'From EM to Diffusion'.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("exercises", help="generate exercises/ from solutions/")
    p.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_probability_toolkit)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any exercise is out of date")
    p.add_argument("--force", action="store_true", help="overwrite exercises edited since they were generated")
    p.add_argument("--root", default=".", help="the repository root (default: .)")

    p = sub.add_parser("install-cells", help="rewrite the install cell of book/ and solutions/ notebooks")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any cell is out of date")
    p.add_argument("--root", default=".")

    p = sub.add_parser("grade", help="grade a folder of submitted notebooks into a CSV")
    p.add_argument("submissions", help="folder holding the submitted notebooks (searched recursively)")
    p.add_argument("--out", default="grades.csv", help="the CSV to write (default: grades.csv)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one cell may run (default: 120)")
    p.add_argument("--notebook-timeout", type=float, default=1800,
                   help="seconds one notebook may run, from its kernel's start (default: 1800)")
    p.add_argument("--memory", type=float, default=4.0,
                   help="GB of memory one kernel and its children may use (default: 4)")
    p.add_argument("--max-output", type=float, default=10.0, help="MB of output one notebook may print (default: 10)")
    p.add_argument("--jobs", type=int, default=1,
                   help="submissions graded at once, each in its own kernel (default: 1)")
    p.add_argument("--reference", default=None,
                   help="folder of the reference exercise notebooks (default: the repository's exercises/)")
    p.add_argument("--kernel", default="python3", help="the Jupyter kernel to run submissions in")

    p = sub.add_parser("execute", help="run notebooks in place, storing outputs (quick profile, CPU)")
    p.add_argument("paths", nargs="+", help="notebooks to execute, e.g. solutions/01_probability_toolkit.ipynb")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default: 600)")

    p = sub.add_parser("execute-book", help="execute the chapters into the book build's cache, several at a time")
    p.add_argument("names", nargs="*", help="only these chapters (e.g. 05_vae)")
    p.add_argument("--jobs", type=int, default=2, help="kernels run at once (default: 2)")
    p.add_argument("--force", action="store_true", help="execute even chapters the cache holds unchanged")
    p.add_argument("--root", default=".", help="the repository root (default: .)")

    sub.add_parser("checks", help="list the exercise checks")

    args = parser.parse_args(argv)
    if args.command == "exercises":
        return _exercises(args)
    if args.command == "install-cells":
        return _install_cells(args)
    if args.command == "grade":
        return _grade(args)
    if args.command == "execute-book":
        return _execute_book(args)
    if args.command == "execute":
        from coursepkg.instructor.generator import execute_in_place

        for path in args.paths:
            execute_in_place(path, timeout=args.timeout)
            print(f"executed: {path}")
        return 0
    from coursepkg.grading import list_checks

    print("\n".join(list_checks()))
    return 0


def _exercises(args) -> int:
    from coursepkg.instructor.generator import GeneratorError, generate_exercises

    try:
        outcomes = generate_exercises(args.root, check=args.check, force=args.force, names=args.names or None)
    except GeneratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = False
    for o in outcomes:
        line = f"{o.status:>11}  {o.path}" + (f"  ({o.detail})" if o.detail else "")
        print(line, file=sys.stderr if o.status in ("refused", "out of date") else sys.stdout)
        bad |= o.status in ("refused", "out of date")
    if not outcomes:
        print("no solution notebooks found in solutions/")
    return 1 if bad else 0


def _execute_book(args) -> int:
    from coursepkg.instructor.book import ChapterError, execute_book

    try:
        runs = execute_book(args.root, jobs=args.jobs, force=args.force, names=args.names or None)
    except (ChapterError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for run in sorted(runs, key=lambda r: r.path.name):
        print(f"{'cached' if run.cached else f'{run.seconds:6.1f} s'}  {run.path.name}")
    return 0


def _install_cells(args) -> int:
    from coursepkg.instructor.generator import GeneratorError, sync_install_cells

    try:
        changed = sync_install_cells(args.root, check=args.check)
    except GeneratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "out of date" if args.check else "updated"
    for path in changed:
        print(f"{verb}: {path}")
    if not changed:
        print("install cells are up to date")
    return 1 if (args.check and changed) else 0


def _grade(args) -> int:
    from coursepkg.instructor.batch import Limits, grade_folder

    try:
        limits = Limits(timeout=args.timeout, notebook_timeout=args.notebook_timeout, memory_gb=args.memory,
                        max_output_mb=args.max_output)
        report = grade_folder(args.submissions, args.out, limits=limits, jobs=args.jobs, kernel_name=args.kernel,
                              reference=args.reference)
    except (NotADirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    by_submission = defaultdict(list)
    for r in report.rows:
        by_submission[r.submission].append(r)
    for name, rows in by_submission.items():
        counts = Counter(r.status for r in rows if r.status != "passed")
        rest = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        flagged = sorted({r.exercise for r in rows if r.flags})
        line = f"{name}: {sum(r.passed for r in rows)}/{len(rows)} passed" + (f" ({rest})" if rest else "")
        print(line + (f"; flagged for reading: {', '.join(flagged)}" if flagged else ""))
    print(f"wrote {len(report.rows)} rows to {args.out} in {report.seconds:.1f} s")
    if report.originals:
        print(f"{len(report.originals)} file(s) of {args.submissions} changed while grading:")
        for name, what in sorted(report.originals.items()):
            print(f"  {name}: {what}")
        return 1
    print(f"originals verified unchanged ({args.submissions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
