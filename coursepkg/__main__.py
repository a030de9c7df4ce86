"""Command line: ``python -m coursepkg {exercises,install-cells,grade,execute,checks}``."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict


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
    p.add_argument("--timeout", type=int, default=120, help="seconds one cell may run (default: 120)")
    p.add_argument("--kernel", default="python3", help="the Jupyter kernel to run submissions in")

    p = sub.add_parser("execute", help="run notebooks in place, storing outputs (quick profile, CPU)")
    p.add_argument("paths", nargs="+", help="notebooks to execute, e.g. solutions/01_probability_toolkit.ipynb")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default: 600)")

    sub.add_parser("checks", help="list the exercise checks")

    args = parser.parse_args(argv)
    if args.command == "exercises":
        return _exercises(args)
    if args.command == "install-cells":
        return _install_cells(args)
    if args.command == "grade":
        return _grade(args)
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
    from coursepkg.instructor.batch import grade_folder

    try:
        rows = grade_folder(args.submissions, args.out, timeout=args.timeout, kernel_name=args.kernel)
    except NotADirectoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    score = defaultdict(lambda: [0, 0])
    for r in rows:
        score[r.submission][1] += 1
        score[r.submission][0] += r.passed
    for sub_name, (ok, total) in score.items():
        print(f"{sub_name}: {ok}/{total} passed")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
