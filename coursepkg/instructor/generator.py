"""Notebook tooling: the exercise generator and the install cell, both driven by ``_config.yml``.

Exercise generation (``python -m coursepkg exercises``). ``solutions/NN_slug.ipynb`` is the single
source. In code cells, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's
markers) become ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the marker's indentation;
in markdown cells, the text between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->``
becomes *YOUR ANSWER HERE*; cells tagged ``solution-only`` are dropped. Outputs are cleared, a
Colab badge is added, and ``exercises/NN_slug.ipynb`` is written.

Every code cell of an exercise says, in its metadata, what it is to the batch grader
(:mod:`coursepkg.instructor.batch`): ``{"coursepkg": {"answer": KEY}}`` for a cell the student fills
in (it held a solution block), ``{"coursepkg": {"locked": KEY}}`` for the others (setup, check and
demonstration cells, which the grader always runs from the reference exercise). ``KEY`` is the
solution cell's nbformat id, so it is stable across regenerations and equals the cell id of the
solution, which lets the grader match a solution notebook like a submission; Jupyter and Colab keep
cell metadata even where they rewrite cell ids. :func:`cell_role` reads it back.

The generator never overwrites work. Each generated notebook records, in its metadata, a hash of
the content it was generated with. Before writing, the generator hashes the existing file's content
(cell types, sources and outputs): if it differs from the recorded hash (a student ran or edited
it, or the file was not made by the generator), it refuses unless ``force=True``.

The install cell (``python -m coursepkg install-cells``). Every notebook starts with a code cell
that installs ``coursepkg`` from the repository named in ``_config.yml`` when it is missing (Colab).
The command rewrites that cell in ``book/`` and ``solutions/`` notebooks; ``--check`` only reports.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MD_STUB = "*YOUR ANSWER HERE*"
INSTALL_MARKER = "# coursepkg install cell"
SOLUTION_ONLY_TAG = "solution-only"
# a solution notebook is titled "# Solutions NN: topic" (so that the book's Solutions part does not
# repeat the Exercises part's titles); its exercise is titled "# Exercises NN: topic"
TITLE_RE = re.compile(r"^#\s+Solutions\b", re.M)
ANSWER, LOCKED = "answer", "locked"  # the roles of exercise cells, in their metadata (see cell_role)
INSTALL_KEY = "install-coursepkg"
NOTEBOOK_RE = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


class GeneratorError(Exception):
    """A problem with a source notebook or with a target the generator must not overwrite."""


# --------------------------------------------------------------------------------------------------
# the repository, as _config.yml names it
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repository:
    url: str
    branch: str

    @property
    def slug(self) -> str:
        """``owner/name`` of a GitHub URL."""
        m = re.match(r"https?://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", self.url)
        if not m:
            raise GeneratorError(f"repository.url in _config.yml must be a GitHub URL, got {self.url!r}")
        return m.group(1)

    @property
    def pip_requirement(self) -> str:
        return f"coursepkg @ git+{self.url.rstrip('/')}@{self.branch}"

    def colab_url(self, relpath: str) -> str:
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.branch}/{relpath}"


def repository(root: str | Path = ".") -> Repository:
    """Read ``repository.url`` and ``repository.branch`` from ``<root>/_config.yml``."""
    path = Path(root) / "_config.yml"
    if not path.is_file():
        raise GeneratorError(f"{path} not found: run from the repository root or pass --root")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    repo = cfg.get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch", "main")
    if not url:
        raise GeneratorError(f"{path} has no repository.url")
    return Repository(str(url), str(branch))


def install_cell_source(repo: Repository) -> str:
    """The source of the first code cell of every notebook.

    When ``coursepkg`` is missing it runs pip; if pip fails (no network, a repository URL that is not
    reachable), it stops with a message that names what it tried, pip's last lines, and how to
    install the package by hand, instead of a bare ``CalledProcessError``.
    """
    return "\n".join([
        f"{INSTALL_MARKER} (generated from _config.yml by `python -m coursepkg install-cells`)",
        "# Installs the course package when it is missing (on Colab, for example); does nothing otherwise.",
        "import importlib.util, subprocess, sys",
        "if importlib.util.find_spec(\"coursepkg\") is None:",
        f"    requirement = \"{repo.pip_requirement}\"",
        "    pip = subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\", requirement],",
        "                         capture_output=True, text=True)",
        "    if pip.returncode != 0:",
        "        raise RuntimeError(",
        "            f\"could not install the course package: pip install '{requirement}' failed:\\n\"",
        "            + \"\\n\".join((pip.stderr or pip.stdout).strip().splitlines()[-8:])",
        "            + \"\\nInstall it by hand: download or clone the course repository, run \"",
        "            \"`pip install -e .` in its folder (or `pip install <folder>`), restart the kernel \"",
        "            \"and run this notebook again.\") from None",
    ])


def _install_cell(repo: Repository, like: dict | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(install_cell_source(repo))
    if like is not None and like.get("id"):
        cell["id"] = like["id"]
    cell.metadata["tags"] = ["remove-cell"]
    return cell


def _is_install_cell(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and "".join(cell.get("source", "")).startswith(INSTALL_MARKER)


def sync_install_cells(root: str | Path = ".", *, check: bool = False,
                       folders: tuple[str, ...] = ("book", "solutions")) -> list[Path]:
    """Make the first cell of each notebook in ``folders`` the canonical install cell.

    Returns the notebooks that were (or, with ``check=True``, would be) changed.
    """
    root = Path(root)
    repo = repository(root)
    changed = []
    for folder in folders:
        for path in sorted((root / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            first = nb.cells[0] if nb.cells else None
            want = _install_cell(repo, like=first if first is not None and _is_install_cell(first) else None)
            if first is not None and _is_install_cell(first):
                if first.source == want.source and first.metadata.get("tags") == ["remove-cell"] \
                        and not first.get("outputs"):
                    continue
                nb.cells[0] = want
            else:
                nb.cells.insert(0, want)
            changed.append(path)
            if not check:
                nbformat.write(nb, path)
    return changed


# --------------------------------------------------------------------------------------------------
# exercise generation
# --------------------------------------------------------------------------------------------------
def _strip_code(source: str, where: str) -> str:
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise GeneratorError(f"{where}, line {lineno}: '{BEGIN}' inside another solution block")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in STUB)
        elif stripped == END:
            if not inside:
                raise GeneratorError(f"{where}, line {lineno}: '{END}' without a matching '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise GeneratorError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out)


def _strip_markdown(source: str, where: str) -> str:
    pattern = re.compile(re.escape(MD_BEGIN) + r".*?" + re.escape(MD_END), re.S)
    text = pattern.sub(MD_STUB, source)
    if MD_BEGIN in text or MD_END in text:
        raise GeneratorError(f"{where}: unbalanced '{MD_BEGIN}' / '{MD_END}' markers")
    return text


def content_hash(nb: dict) -> str:
    """Hash of what a person can change in a notebook: cell types, sources and outputs."""
    cells = [[c.get("cell_type"), "".join(c.get("source", "")), c.get("outputs", [])] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()[:16]


def cell_role(cell: dict) -> tuple[str, str] | None:
    """``(role, key)`` of a cell of a generated exercise, ``role`` being ``"answer"`` or ``"locked"``;
    ``None`` for a cell without the generator's mark (one a student added, or any markdown cell
    that is not an answer)."""
    mark = (cell.get("metadata") or {}).get("coursepkg")
    if isinstance(mark, dict):
        for role in ANSWER, LOCKED:
            if isinstance(mark.get(role), str):
                return role, mark[role]
    return None


def _mark(cell: nbformat.NotebookNode, role: str, key: str) -> None:
    cell.metadata["coursepkg"] = {role: key}


def make_exercise(solution: nbformat.NotebookNode, repo: Repository, relpath: str,
                  source_relpath: str) -> nbformat.NotebookNode:
    """The exercise notebook generated from ``solution`` (which is not modified)."""
    nb = copy.deepcopy(solution)
    cells, n_blocks, retitled = [], 0, False
    for i, cell in enumerate(nb.cells):
        where = f"{source_relpath}, cell {i}"
        if SOLUTION_ONLY_TAG in cell.metadata.get("tags", []):
            continue
        if _is_install_cell(cell):
            continue  # replaced by the canonical one below
        key = cell.get("id") or f"cell-{i}"  # nbformat keeps ids unique (it renames duplicates on reading)
        if cell.cell_type == "code":
            blocks = cell.source.count(BEGIN)
            n_blocks += blocks
            cell.source = _strip_code(cell.source, where)
            cell.outputs, cell.execution_count = [], None
            for name in ("execution", "collapsed", "scrolled"):
                cell.metadata.pop(name, None)
            _mark(cell, ANSWER if blocks else LOCKED, key)
        elif cell.cell_type == "markdown":
            if not retitled and cell.source.lstrip().startswith("# "):
                cell.source, retitled = TITLE_RE.sub("# Exercises", cell.source, count=1), True
            blocks = cell.source.count(MD_BEGIN)
            n_blocks += blocks
            cell.source = _strip_markdown(cell.source, where)
            if blocks:
                _mark(cell, ANSWER, key)
        cells.append(cell)
    if n_blocks == 0:
        raise GeneratorError(f"{source_relpath} has no '{BEGIN}' block: nothing for the student to write")
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({repo.colab_url(relpath)})\n\n"
        "*Exercise notebook: fill in every cell marked `YOUR CODE HERE`, run it, then run the check cell "
        "below it. Generated from the solutions by `python -m coursepkg exercises`.*")
    badge["id"] = "colab-badge"
    install = _install_cell(repo, like={"id": INSTALL_KEY})
    _mark(install, LOCKED, INSTALL_KEY)
    nb.cells = [install, badge] + cells
    nb.metadata.pop("widgets", None)
    nb.metadata["coursepkg"] = {"generated_from": source_relpath}
    nb.metadata["coursepkg"]["content_hash"] = content_hash(nb)
    return nb


@dataclass
class Outcome:
    path: Path
    status: str  # "written", "unchanged", "out of date", "refused"
    detail: str = ""


def generate_exercises(root: str | Path = ".", *, check: bool = False, force: bool = False,
                       names: list[str] | None = None) -> list[Outcome]:
    """Write ``exercises/NN_slug.ipynb`` for each ``solutions/NN_slug.ipynb``.

    ``check=True`` writes nothing and reports notebooks that are out of date. Without ``force``,
    an existing exercise whose content differs from what the generator last wrote is left alone
    and reported as ``refused``.
    """
    root = Path(root)
    repo = repository(root)
    sources = sorted((root / "solutions").glob("*.ipynb"))
    if names:
        wanted = {n if n.endswith(".ipynb") else n + ".ipynb" for n in names}
        missing = wanted - {p.name for p in sources}
        if missing:
            raise GeneratorError(f"no solution notebook named {', '.join(sorted(missing))} in {root / 'solutions'}")
        sources = [p for p in sources if p.name in wanted]
    (root / "exercises").mkdir(exist_ok=True)
    outcomes = []
    for src in sources:
        if not NOTEBOOK_RE.match(src.name):
            raise GeneratorError(f"{src}: solution notebooks are named NN_slug.ipynb")
        target = root / "exercises" / src.name
        rel_target, rel_src = f"exercises/{src.name}", f"solutions/{src.name}"
        new = make_exercise(nbformat.read(src, as_version=4), repo, rel_target, rel_src)
        text = nbformat.writes(new) + "\n"
        if target.exists():
            try:
                old = json.loads(target.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                old, old_err = None, err
            if old is not None and old == json.loads(text):
                outcomes.append(Outcome(target, "unchanged"))
                continue
            if check:
                outcomes.append(Outcome(target, "out of date", f"regenerate from {rel_src}"))
                continue
            recorded = (old or {}).get("metadata", {}).get("coursepkg", {}).get("content_hash")
            edited = old is None or recorded is None or content_hash(old) != recorded
            if edited and not force:
                why = (f"it cannot be read ({old_err})" if old is None else
                       "it was not written by the generator" if recorded is None else
                       "its content differs from what the generator last wrote (edited or run)")
                outcomes.append(Outcome(target, "refused", f"{why}; pass --force to overwrite it"))
                continue
        elif check:
            outcomes.append(Outcome(target, "out of date", f"missing; generate it from {rel_src}"))
            continue
        target.write_text(text, encoding="utf-8")
        outcomes.append(Outcome(target, "written"))
    return outcomes


# --------------------------------------------------------------------------------------------------
# executing solution notebooks in place (their stored outputs are what nbval compares)
# --------------------------------------------------------------------------------------------------
REFERENCE_ENV = {"COURSEPKG_PROFILE": "quick", "COURSEPKG_DEVICE": "cpu"}


def execute_in_place(path: str | Path, *, timeout: int = 600, kernel_name: str = "python3") -> None:
    """Run a notebook top to bottom and store its outputs, in the reference setting that the
    tests compare against (quick profile, CPU), whatever machine this is."""
    import os

    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in REFERENCE_ENV}
    os.environ.update(REFERENCE_ENV)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
