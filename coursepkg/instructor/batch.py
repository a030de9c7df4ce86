"""Batch grading for instructors: ``python -m coursepkg grade SUBMISSIONS_DIR --out grades.csv``.

What is graded is what the student answered, not what the notebook claims.

1. **Copies first.** Every file of the folder is read into memory and hashed before any kernel runs;
   each submission is graded from that private copy, so nothing a kernel does to the folder changes
   a grade. When all are graded the originals are hashed again, and every file that changed, went
   missing or appeared is reported (command output, exit status 1, and the ``note`` of its rows).
2. **Rebuilt from the reference.** The submission's chapter is read from its metadata, its ``NN_``
   file name or the checks it calls, and its reference is ``exercises/NN_slug.ipynb`` (``--reference
   DIR``). The notebook that runs is the reference with only its *answer cells* replaced by the
   student's. The generator marks every exercise cell ``answer`` or ``locked`` in its metadata
   (:func:`coursepkg.instructor.generator.cell_role`); a submission's cells are matched to them by
   that mark, then by cell id (a solution notebook shares its ids with the exercise), then by content
   and order (for notebooks whose metadata was lost). Setup, demonstration and check cells run as the
   reference has them: locked cells the student changed, cells the student added, and locked cells
   the student deleted are reported in ``note`` and never run (a deleted one runs from the reference).
   A forged mark gains nothing: it can only move a cell into an answer's place, never add code.
3. **Verdicts the answers are not handed.** Each check cell of the reference is replaced by a cell of
   the grader's own: it removes every ``coursepkg`` module from ``sys.modules``, imports
   :mod:`coursepkg.grading` again from disk (refusing modules loaded from anywhere but this package's
   folder), calls ``check`` on the answer, and prints the verdict signed with an HMAC whose key is a
   fresh random secret written only into that cell. The grader reads the verdict only from that
   cell's own outputs (the kernel replies to each cell separately) and only with a valid signature: a
   log, printed text, stored outputs, a rebound ``check`` or a patched ``coursepkg.grading`` cannot
   produce one, and an answer cannot change the verdict of an exercise checked before it runs.
4. **Flags for the instructor.** Answer cells are read (as Python, after IPython's own transforms,
   so ``!cmd`` and ``%magic`` count) and the ``flags`` column names what an honest answer has no
   need of: the file system and processes (``os``, ``open``, ``pathlib``, ``shutil``,
   ``subprocess``...), the interpreter (``sys.modules``, ``sys.settrace``, builtins, ``globals()``,
   ``inspect``, ``gc``, ``ctypes``, ``importlib``, ``get_ipython``, ``exec``/``eval``, threads), the
   grading module, rebinding ``check``, and assigning attributes of modules (monkeypatching).
5. **Limits per kernel.** Time per cell (``--timeout``) and per notebook from the kernel's start
   (``--notebook-timeout``), memory of the kernel's process tree polled from ``/proc``
   (``--memory``, GB; Linux only, elsewhere it is not enforced) and the size of its outputs
   (``--max-output``, MB); a kernel over a limit is killed and the rows say which limit, in words.
   ``--jobs N`` runs N kernels at once (threads, each driving its own kernel).
6. **Kernels see nothing of the folder.** Each runs in its own empty temporary folder, given no
   path of the submissions: its environment is this process's minus every variable that names the
   folder, with ``PWD`` set to its own folder.

What it cannot do. A kernel runs the student's code as the instructor's OS user, in the process where
its checks run. The same user can read and write every file the instructor can (a submission that
knows or searches for the folder can edit it: that is detected and reported, not prevented), and
code in the kernel can subvert the checks from inside: monkeypatch ``torch``, hook IPython to read the
next cell's secret, walk the stack from inside an answer that a check calls. Such code needs the
tools the flags name, so read the answer cells of every flagged row; obfuscated code can evade a
reader of the source, which is why ``exec``, ``eval``, ``__import__`` and ``getattr`` games are flagged
too. Memory is polled (every 0.2 s), so a kernel may briefly exceed the limit before it is killed.
For hostile students, run the command inside a container or as a user that owns nothing else.

The CSV has one row per (submission, exercise): ``submission, exercise, status, passed, message,
note, flags``. ``status`` is ``passed``, ``failed`` (the check rejected the answer), ``not attempted``
(the answer cell was left blank, or is missing), ``not run`` (the notebook stopped before the check:
a time, memory or output limit, a dead kernel), or ``error`` (not a notebook, or no reference to
grade it against). ``message`` is what the student would read; ``note`` is for the instructor.
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

import coursepkg
from coursepkg.instructor.generator import ANSWER, LOCKED, REFERENCE_ENV, STUB, cell_role

CHECK_CALL = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+\.[A-Za-z0-9_]+)["']""")
FIELDS = ["submission", "exercise", "status", "passed", "message", "note", "flags"]
PACKAGE_DIR = Path(coursepkg.__file__).resolve().parent
DEFAULT_REFERENCE = PACKAGE_DIR.parent / "exercises"
VERDICT = "COURSEPKG-VERDICT"
VERDICT_LINE = re.compile("^" + VERDICT + r" ([0-9a-f]{64}) (\{.*\})$", re.M)
POLL_S = 0.2
OUTPUT_MESSAGES = {"stream", "display_data", "execute_result", "error", "update_display_data"}


@dataclass
class Row:
    submission: str
    exercise: str
    status: str
    passed: bool
    message: str
    note: str = ""
    flags: str = ""


@dataclass(frozen=True)
class Limits:
    """What one kernel may use. ``timeout``: seconds per cell; ``notebook_timeout``: seconds per
    notebook, from the kernel's start; ``memory_gb``: resident memory of the kernel and its children;
    ``max_output_mb``: the size of everything the notebook outputs."""

    timeout: float = 120
    notebook_timeout: float = 1800
    memory_gb: float = 4.0
    max_output_mb: float = 10.0

    def __post_init__(self):
        for name in ("timeout", "notebook_timeout", "memory_gb", "max_output_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Submission:
    """One file of the folder: ``data`` is the private copy, read before any kernel ran."""

    name: str
    path: Path
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Report:
    rows: list[Row]
    originals: dict[str, str]  # file name -> what happened to it while grading (changed, deleted, added)
    seconds: float


# --------------------------------------------------------------------------------------------------
# the reference exercise
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefCell:
    key: str
    role: str  # "answer", "locked" or "check"
    source: str
    checks: tuple[tuple[str, str], ...] = ()  # check cells: (exercise id, answer expression), in order


@dataclass
class Reference:
    path: Path
    cells: list[RefCell]  # the code cells, in order
    answers_of: dict[str, list[int]]  # exercise id -> indices (in cells) of the answer cells it checks
    module_names: frozenset[str]  # names the locked cells bind to modules (for the monkeypatch flag)

    @property
    def exercises(self) -> list[str]:
        return list(self.answers_of)


class BadReference(Exception):
    """The reference exercise cannot be found or is not in the form the grader needs."""


def _check_calls(source: str, where: str) -> tuple[tuple[str, str], ...]:
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise BadReference(f"{where}: the check cell does not parse ({err.msg})") from None
    calls = []
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "check"
                and len(call.args) == 2 and isinstance(call.args[0], ast.Constant)
                and isinstance(call.args[0].value, str)):
            raise BadReference(f"{where}: a check cell must hold only check(\"<id>\", answer) calls")
        calls.append((call.args[0].value, ast.get_source_segment(source, call.args[1])))
    return tuple(calls)


def load_reference(path: str | Path) -> Reference:
    """Read a generated exercise notebook as the grader's reference."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    cells, answers_of, pending, modules = [], {}, [], set()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        mark = cell_role(cell)
        role = mark[0] if mark else (ANSWER if all(s in cell.source for s in STUB) else LOCKED)
        key = mark[1] if mark else (cell.get("id") or f"cell-{i}")
        checks = ()
        if role == LOCKED and CHECK_CALL.search(cell.source):
            role, checks = "check", _check_calls(cell.source, f"{path.name}, cell {i}")
        elif role == LOCKED:
            modules |= _module_names(cell.source)
        if role == ANSWER:
            pending.append(len(cells))
        for exercise, _ in checks:
            answers_of[exercise], pending = pending, []
        cells.append(RefCell(key, role, cell.source, checks))
    if not answers_of:
        raise BadReference(f"{path} has no check cell")
    return Reference(path, cells, answers_of, frozenset(modules))


def find_reference(chapter: str, folder: str | Path) -> Path:
    folder = Path(folder)
    found = sorted(folder.glob(f"{chapter}_*.ipynb"))
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise BadReference(f"{what} reference exercise for chapter {chapter} in {folder} (pass --reference DIR)")
    return found[0]


def _chapter(name: str, nb: dict) -> str | None:
    source = ((nb.get("metadata") or {}).get("coursepkg") or {}).get("generated_from", "")
    for text in (Path(str(source)).name, Path(name).name):
        m = re.match(r"(\d\d)_", text)
        if m:
            return m.group(1)
    called = [i.split(".")[0] for c in nb.get("cells", []) if c.get("cell_type") == "code"
              for i in CHECK_CALL.findall("".join(c.get("source", "")))]
    return Counter(called).most_common(1)[0][0] if called else None


# --------------------------------------------------------------------------------------------------
# matching a submission's cells to the reference's
# --------------------------------------------------------------------------------------------------
@dataclass
class Match:
    answers: dict[int, str]  # reference cell index -> the student's source for that answer cell
    notes: list[str] = field(default_factory=list)  # changed, added and deleted cells, in words


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _describe(index: int, source: str) -> str:
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return f"cell {index + 1} ({first[:40] + ('...' if len(first) > 40 else '')!r})"


def _similarity(ref: RefCell, source: str) -> float:
    if ref.role == ANSWER:  # the lines the student did not have to write (signature, docstring)
        given = {line.strip() for line in ref.source.splitlines() if line.strip() and line.strip() not in STUB}
        have = {line.strip() for line in source.splitlines()}
        return len(given & have) / len(given) if given else 0.0
    return difflib.SequenceMatcher(None, _norm(ref.source), _norm(source)).ratio()


def match_cells(ref: Reference, nb: dict) -> Match:
    """Pair the submission's code cells with the reference's: by the generator's mark, by cell id,
    then, between cells already paired, by content."""
    sub = [(j, c) for j, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]
    sources = {j: "".join(c.get("source", "")) for j, c in sub}
    pairs: dict[int, int] = {}  # reference index -> submission cell index
    used: set[int] = set()
    for key_of in (lambda c: (cell_role(c) or (None, None))[1], lambda c: c.get("id")):
        for i, r in enumerate(ref.cells):
            if i in pairs:
                continue
            j = next((j for j, c in sub if j not in used and key_of(c) == r.key), None)
            if j is not None:
                pairs[i] = j
                used.add(j)
    for i, r in enumerate(ref.cells):  # the rest: the most similar free cell between the neighbours
        if i in pairs:
            continue
        lo = max((pairs[k] for k in pairs if k < i), default=-1)
        hi = min((pairs[k] for k in pairs if k > i), default=len(nb.get("cells", [])))
        free = [j for j, _ in sub if lo < j < hi and j not in used]
        scored = sorted(((_similarity(r, sources[j]), -j) for j in free), reverse=True)
        if scored and scored[0][0] >= 0.5:
            pairs[i] = -scored[0][1]
            used.add(pairs[i])
    notes = []
    changed = [_describe(pairs[i], sources[pairs[i]]) for i, r in enumerate(ref.cells)
               if r.role != ANSWER and i in pairs and _norm(sources[pairs[i]]) != _norm(r.source)]
    added = [_describe(j, sources[j]) for j, _ in sub if j not in used and sources[j].strip()]
    deleted = [r for i, r in enumerate(ref.cells) if r.role != ANSWER and i not in pairs]
    if changed:
        notes.append("locked cells changed (the reference's ran instead): " + ", ".join(changed))
    if added:
        notes.append("cells added outside the answer cells (not run): " + ", ".join(added))
    if deleted:
        notes.append(f"{len(deleted)} locked cell(s) missing (the reference's ran instead)")
    answers = {i: sources[pairs[i]] for i, r in enumerate(ref.cells) if r.role == ANSWER and i in pairs}
    return Match(answers, notes)


def _is_blank(ref: RefCell, source: str | None) -> bool:
    return source is None or not source.strip() or _norm(source) == _norm(ref.source)


# --------------------------------------------------------------------------------------------------
# flags: what an honest answer has no need of
# --------------------------------------------------------------------------------------------------
RISKY_MODULES = {"os", "pathlib", "shutil", "subprocess", "inspect", "gc", "ctypes", "importlib", "builtins",
                 "threading", "multiprocessing", "signal", "glob", "tempfile", "socket", "pickle", "io",
                 "coursepkg.grading"}
RISKY_NAMES = {"open", "exec", "eval", "compile", "__import__", "globals", "vars", "get_ipython", "setattr",
               "delattr", "breakpoint", "__builtins__", "__loader__", "__spec__"}
RISKY_SYS = {"modules", "settrace", "setprofile", "_getframe", "_current_frames", "meta_path", "path_hooks",
             "path", "stdout", "stderr", "displayhook", "excepthook", "addaudithook", "exit"}
RISKY_ATTRS = {"__globals__", "__code__", "__builtins__", "__subclasses__", "__closure__", "f_back", "f_globals",
               "f_locals", "f_builtins", "tb_frame", "gi_frame", "__import__"}
KNOWN_MODULES = {"torch", "math", "np", "numpy", "nn", "F", "plt", "coursepkg", "sys"}


def _python(source: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # an IPython that cannot transform it: read the cell as plain Python
        return source


def _module_names(source: str) -> set[str]:
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):  # `from torch import nn`: nn may be a module
            names |= {a.asname or a.name for a in node.names if a.name[:1].islower() and a.name != "*"}
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def answer_flags(source: str, module_names: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """What an answer cell does that an honest answer has no need of, in words (empty: nothing)."""
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return []
    modules = set(module_names) | KNOWN_MODULES | _module_names(source)
    flags: list[str] = []

    def flag(text):
        if text not in flags:
            flags.append(text)

    def bound(target):
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and node.id == "check":
                flag("rebinds check")
            elif isinstance(node, ast.Attribute) and (_dotted(node) or "").split(".")[0] in modules - {"sys"}:
                flag(f"assigns {_dotted(node)}")  # (sys has flags of its own)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                for risky in RISKY_MODULES:
                    if name == risky or name.startswith(risky + "."):
                        flag(f"imports {risky}")
            if any((a.asname or a.name) == "check" for a in node.names):
                flag("rebinds check")
        elif isinstance(node, ast.Name) and node.id in RISKY_NAMES:
            flag(f"{node.id}()" if node.id not in ("__builtins__", "__loader__", "__spec__") else node.id)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node) or ""
            if dotted.startswith("sys.") and dotted.split(".")[1] in RISKY_SYS:
                flag(".".join(dotted.split(".")[:2]))
            elif dotted == "coursepkg.grading" or dotted.startswith("coursepkg.grading."):
                flag("coursepkg.grading")
            elif node.attr in RISKY_ATTRS:
                flag(f"introspection ({node.attr})")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for target in getattr(node, "targets", None) or [node.target]:
                bound(target)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            bound(node.target)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bound(node.optional_vars)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "check":
            flag("rebinds check")
        elif isinstance(node, (ast.Global, ast.Nonlocal)) and "check" in node.names:
            flag("rebinds check")
    return flags


# --------------------------------------------------------------------------------------------------
# the notebook that runs: the reference, the student's answers, the grader's check cells
# --------------------------------------------------------------------------------------------------
GRADER_CELL = '''\
# The grader's own cell, not the student's: it checks {exercise!r} with coursepkg imported afresh.
def _coursepkg_grade():
    import hashlib, hmac, importlib, json, sys
    record = {{"exercise": {exercise!r}}}
    try:
        for name in [m for m in list(sys.modules) if m == "coursepkg" or m.startswith("coursepkg.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        grading = importlib.import_module("coursepkg.grading")
        try:
            answer = ({answer})
        except Exception as err:
            record.update(passed=False, message=f"the answer could not be found: {{type(err).__name__}}: {{err}}")
        else:
            try:
                result = grading.check({exercise!r}, answer, verbose=False)
                record.update(passed=result.passed is True, message=str(result.message)[:1000])
            except BaseException as err:
                record.update(passed=False, message=f"your answer stopped the check: {{type(err).__name__}}")
        foreign = sorted(m for m, mod in list(sys.modules.items()) if (m == "coursepkg" or m.startswith("coursepkg."))
                         and not str(getattr(mod, "__file__", None) or "").startswith({package!r}))
        if foreign:
            record["grader_error"] = "coursepkg modules loaded from outside " + {package!r} + ": " + ", ".join(foreign)
    except BaseException as err:
        record["grader_error"] = f"{{type(err).__name__}}: {{err}}"[:500]
    body = json.dumps(record, sort_keys=True)
    tag = hmac.new(bytes.fromhex({secret!r}), body.encode(), hashlib.sha256).hexdigest()
    sys.stdout.write("\\n{verdict} " + tag + " " + body + "\\n")  # one write: a line of its own
    sys.stdout.flush()
_coursepkg_grade()
del _coursepkg_grade
'''


@dataclass
class Plan:
    """What each cell of the notebook that runs is: ``(role, reference index, exercise, secret)``."""

    nb: nbformat.NotebookNode
    cells: list[tuple[str, int, str, str]]


def build_notebook(ref: Reference, answers: dict[int, str]) -> Plan:
    """The reference with the student's answers in its answer cells and the grader's check cells."""
    cells, plan = [], []
    for i, r in enumerate(ref.cells):
        if r.role == "check":
            for exercise, answer in r.checks:
                secret = secrets.token_hex(32)
                source = GRADER_CELL.format(exercise=exercise, answer=answer, secret=secret, verdict=VERDICT,
                                            package=str(PACKAGE_DIR) + os.sep)
                cells.append(nbformat.v4.new_code_cell(source))
                plan.append(("grader", i, exercise, secret))
            continue
        source = answers.get(i, r.source) if r.role == ANSWER else r.source
        cells.append(nbformat.v4.new_code_cell(source))
        plan.append((r.role, i, "", ""))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return Plan(nb, plan)


def read_verdict(cell: dict, exercise: str, secret: str) -> dict | None:
    """The verdict the grader's cell printed, if it carries a valid signature for this cell."""
    text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")
    found = []
    for tag, body in VERDICT_LINE.findall(text):
        want = hmac.new(bytes.fromhex(secret), body.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(tag, want):
            rec = json.loads(body)
            if rec.get("exercise") == exercise:
                found.append(rec)
    if len(found) > 1 and any(f != found[0] for f in found):
        return {"exercise": exercise, "grader_error": "conflicting signed verdicts: the cell's secret was read"}
    return found[0] if found else None


# --------------------------------------------------------------------------------------------------
# running one kernel under limits
# --------------------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_rss(pid: int) -> int:
    """Resident memory, in bytes, of process ``pid`` and its descendants (0 where /proc is missing)."""
    if not os.path.isdir("/proc"):
        return 0
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for p in _descendants(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def _kill_tree(pid: int) -> None:
    pids = _descendants(pid) if os.path.isdir("/proc") else [pid]
    try:
        os.killpg(pid, signal.SIGKILL)  # the kernel leads its own session (jupyter_client starts it so)
    except OSError:
        pass
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _client_class():
    from nbclient import NotebookClient

    class GradingClient(NotebookClient):
        """A NotebookClient that kills its kernel past a memory, output or notebook-time limit."""

        def __init__(self, nb, limits: Limits, **kw):
            super().__init__(nb, timeout=max(1, round(limits.timeout)), allow_errors=True,
                             interrupt_on_timeout=False, shutdown_kernel="immediate", **kw)
            self.limits, self.stop_reason, self.running, self.output_bytes = limits, None, -1, 0
            self.kernel_pid, self.finished = None, threading.Event()

        async def async_start_new_kernel(self, **kwargs):
            await super().async_start_new_kernel(**kwargs)
            process = getattr(getattr(self.km, "provisioner", None), "process", None)
            if process is not None:
                self.kernel_pid = process.pid
                threading.Thread(target=self._watch, daemon=True).start()

        def stop(self, reason: str) -> None:
            if self.stop_reason is None:
                self.stop_reason = reason
                if self.kernel_pid:
                    _kill_tree(self.kernel_pid)

        def _watch(self):
            deadline = time.monotonic() + self.limits.notebook_timeout
            limit = self.limits.memory_gb * 2**30
            while not self.finished.wait(POLL_S) and self.stop_reason is None:
                if time.monotonic() > deadline:
                    self.stop(f"it ran past the time limit of {self.limits.notebook_timeout:g} s per notebook")
                elif tree_rss(self.kernel_pid) > limit:
                    self.stop(f"it exceeded {self.limits.memory_gb:g} GB of memory")

        def process_message(self, msg, cell, cell_index):
            if msg.get("msg_type") in OUTPUT_MESSAGES:
                self.output_bytes += len(json.dumps(msg.get("content", {})))
                if self.output_bytes > self.limits.max_output_mb * 2**20:
                    self.stop(f"its output exceeded {self.limits.max_output_mb:g} MB")
                    return None
            return super().process_message(msg, cell, cell_index)

    return GradingClient


def kernel_env(workdir: str, hidden: list[Path]) -> dict[str, str]:
    """The kernel's environment: this process's, minus every variable that names a ``hidden``
    folder, with ``PWD`` set to the kernel's own folder and the reference profile as defaults."""
    marks = {str(p) for h in hidden for p in (Path(h).absolute(), Path(h).resolve())}
    env = {}
    for k, v in os.environ.items():
        if not any(m in v for m in marks):
            env[k] = v
        elif k == "PATH":
            env[k] = os.pathsep.join(d for d in v.split(os.pathsep) if not any(m in d for m in marks))
    env.pop("OLDPWD", None)
    env.pop("COURSEPKG_GRADING_LOG", None)
    env["PWD"] = workdir
    for k, v in REFERENCE_ENV.items():
        env.setdefault(k, v)
    return env


def _run(plan: Plan, limits: Limits, kernel_name: str, hidden: list[Path], attempts: int = 3) -> tuple[str | None, int]:
    """Execute ``plan.nb`` in place in a fresh kernel; return (why it stopped early or None, cell index).

    A kernel that fails before its first cell starts is started again (up to ``attempts`` times): kernels
    started at the same moment (``--jobs``) can race for the same free ports, which no submission causes."""
    for _ in range(attempts - 1):
        stopped, running, limit_hit = _run_once(plan, limits, kernel_name, hidden)
        if not (stopped and running < 0 and not limit_hit):
            return stopped, running
    stopped, running, _ = _run_once(plan, limits, kernel_name, hidden)
    return stopped, running


def _run_once(plan: Plan, limits: Limits, kernel_name: str, hidden: list[Path]) -> tuple[str | None, int, bool]:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    workdir = tempfile.mkdtemp(prefix="coursepkg-kernel-")
    client = _client_class()(plan.nb, limits, kernel_name=kernel_name, resources={"metadata": {"path": workdir}})
    client.on_cell_start = lambda cell, cell_index: setattr(client, "running", cell_index)
    stopped = None
    try:
        client.execute(env=kernel_env(workdir, hidden))
    except CellTimeoutError:
        stopped = f"the notebook timed out: a cell ran longer than {limits.timeout:g} s"
    except DeadKernelError:
        stopped = "the kernel died"
    except Exception as err:  # a kernel that cannot start, ...
        stopped = f"the notebook could not be executed: {type(err).__name__}: {str(err)[:200]}"
    finally:
        client.finished.set()
        shutil.rmtree(workdir, ignore_errors=True)
    if client.stop_reason:  # the kernel was killed over a limit: that is why it stopped
        stopped = f"the kernel was stopped: {client.stop_reason}"
    return stopped, client.running, client.stop_reason is not None


# --------------------------------------------------------------------------------------------------
# grading
# --------------------------------------------------------------------------------------------------
def _where(plan: Plan, ref: Reference, index: int) -> str:
    if not 0 <= index < len(plan.cells):
        return "before the first cell"
    role, i, exercise, _ = plan.cells[index]
    if role == "grader":
        return f"the check of {exercise}"
    owner = next((e for e, cells in ref.answers_of.items() if i in cells), "")
    return f"the answer cell of {owner}" if role == ANSWER else f"locked cell {i + 1} of the reference's code cells"


def grade_submission(sub: Submission, *, reference: str | Path | None = None, limits: Limits | None = None,
                     kernel_name: str = "python3", hidden: list[Path] | None = None) -> list[Row]:
    """Grade one submission from its private copy; never raises for a bad submission."""
    limits = limits or Limits()
    name = sub.name

    def error(message, note=""):
        return [Row(name, "", "error", False, message, note)]

    if not name.endswith(".ipynb"):
        return error("not a notebook: expected a .ipynb file")
    try:
        nb = nbformat.reads(sub.data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # JSON errors, schema errors, undecodable bytes
        return error(f"not a notebook: could not be read as a Jupyter notebook ({type(err).__name__})")
    chapter = _chapter(name, nb)
    if chapter is None:
        return error("cannot tell which chapter this notebook answers: keep its NN_slug.ipynb name or metadata")
    try:
        ref = _reference(find_reference(chapter, reference or DEFAULT_REFERENCE))
    except (BadReference, OSError, ValueError) as err:
        return error(f"no reference exercise to grade chapter {chapter} against", str(err))

    match = match_cells(ref, nb)
    plan = build_notebook(ref, match.answers)
    stopped, running = _run(plan, limits, kernel_name, hidden or [])
    verdicts = {}
    for cell, (role, _, exercise, secret) in zip(plan.nb.cells, plan.cells, strict=True):
        if role == "grader":
            verdicts[exercise] = read_verdict(cell, exercise, secret)
    shared = "; ".join(match.notes)
    rows = []
    for exercise, answer_cells in ref.answers_of.items():
        rec = verdicts.get(exercise)
        flags = [f for i in answer_cells if i in match.answers
                 for f in answer_flags(match.answers[i], ref.module_names)]
        blank = all(_is_blank(ref.cells[i], match.answers.get(i)) for i in answer_cells)
        notes = []
        if rec and rec.get("grader_error"):
            status, message = "not run", "the grader could not run this check"
            notes.append(rec["grader_error"])
        elif rec and rec.get("passed") is True:
            status, message = "passed", rec.get("message", "")
        elif blank:
            status = "not attempted"
            message = "the answer cell was left blank" + (f" ({rec['message']})" if rec else "")
            if not any(i in match.answers for i in answer_cells):
                notes.append("no answer cell for this exercise was found in the submission")
        elif rec:
            status, message = "failed", rec.get("message", "")
        elif stopped:
            status, message = "not run", f"not reached: {stopped}"
            notes.append(f"stopped in {_where(plan, ref, running)}")
        else:
            status, message = "not run", "the check did not run"
            notes.append("no signed verdict came back from the grader's check cell")
        rows.append(Row(name, exercise, status, status == "passed", message,
                        "; ".join(n for n in notes + [shared] if n), "; ".join(dict.fromkeys(flags))))
    return rows


_REFERENCES: dict[tuple[str, float], Reference] = {}
_REFERENCES_LOCK = threading.Lock()


def _reference(path: Path) -> Reference:
    key = (str(path.resolve()), path.stat().st_mtime)
    with _REFERENCES_LOCK:
        if key not in _REFERENCES:
            _REFERENCES[key] = load_reference(path)
        return _REFERENCES[key]


def grade_notebook(path: str | Path, name: str | None = None, *, timeout: float = 120,
                   kernel_name: str = "python3", reference: str | Path | None = None,
                   limits: Limits | None = None) -> list[Row]:
    """Grade one notebook file (read once, never written) and return its rows."""
    path = Path(path)
    limits = limits or Limits(timeout=timeout)
    sub = Submission(name or path.name, path, path.read_bytes())
    return grade_submission(sub, reference=reference, limits=limits, kernel_name=kernel_name,
                            hidden=[path.parent])


def stage(root: Path, exclude: set[Path]) -> list[Submission]:
    """Every file under ``root`` (but checkpoints and ``exclude``), read into memory."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts
                   and p.resolve() not in exclude)
    return [Submission(str(p.relative_to(root)), p, p.read_bytes()) for p in files]


def verify_originals(root: Path, staged: list[Submission], exclude: set[Path]) -> dict[str, str]:
    """What happened to the folder while it was graded: files changed, deleted or added."""
    found = {}
    for sub in staged:
        try:
            now = hashlib.sha256(sub.path.read_bytes()).hexdigest()
        except OSError:
            found[sub.name] = "deleted while the submissions were graded"
            continue
        if now != sub.sha256:
            found[sub.name] = (f"changed while the submissions were graded (sha256 {sub.sha256[:12]} before, "
                               f"{now[:12]} after); graded from the copy taken before any kernel ran")
    names = {s.name for s in staged}
    for sub in stage(root, exclude):
        if sub.name not in names:
            found[sub.name] = "appeared while the submissions were graded (not graded)"
    return found


def grade_folder(submissions: str | Path, out: str | Path, *, limits: Limits | None = None, jobs: int = 1,
                 kernel_name: str = "python3", reference: str | Path | None = None,
                 timeout: float | None = None) -> Report:
    """Grade every file in ``submissions`` (recursively), write the CSV to ``out``, and report what
    changed in the folder meanwhile."""
    root = Path(submissions)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of submissions")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    limits = limits or (Limits(timeout=timeout) if timeout else Limits())
    out = Path(out)
    exclude = {out.resolve()}
    start = time.perf_counter()
    staged = stage(root, exclude)  # every copy is taken before any kernel runs
    hidden = [root]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        graded = list(pool.map(lambda s: grade_submission(s, reference=reference, limits=limits,
                                                          kernel_name=kernel_name, hidden=hidden), staged))
    originals = verify_originals(root, staged, exclude)
    rows = []
    for sub, sub_rows in zip(staged, graded, strict=True):
        for row in sub_rows:
            if sub.name in originals:
                row.note = "; ".join(n for n in (row.note, f"the original file {originals[sub.name]}") if n)
            rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return Report(rows, originals, time.perf_counter() - start)
