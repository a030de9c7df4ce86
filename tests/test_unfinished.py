"""An exercise that is not written yet fails in one line in the cells that use it (grading.unfinished)."""

from __future__ import annotations

import linecache
import sys

import nbformat
import pytest

from coursepkg.grading import unfinished


def _compiled(source: str, filename: str):
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # as IPython does
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _traceback_of(fn):
    try:
        fn()
    except NotImplementedError:
        return sys.exc_info()[2]
    raise AssertionError("expected NotImplementedError")


def test_the_generator_stub_is_recognised_and_named():
    ns = _compiled("def vae_loss(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n",
                   "<cell-1>")
    assert unfinished.stub_function(_traceback_of(lambda: ns["vae_loss"](1))) == "vae_loss"
    assert "`vae_loss` is not written yet" in unfinished.message("vae_loss")


@pytest.mark.parametrize("source", [
    "def f():\n    raise NotImplementedError('my own reason')\n",              # the student's own error
    "def f():\n    x = 1\n    raise NotImplementedError()\n",                 # not after the marker
    "def f():\n    # YOUR CODE HERE\n    return g()\ndef g():\n    raise NotImplementedError\n",
])
def test_other_not_implemented_errors_keep_their_traceback(source):
    ns = _compiled(source, "<cell-2>")
    assert unfinished.stub_function(_traceback_of(ns["f"])) is None


def test_install_outside_ipython_does_nothing():
    assert unfinished.install() is False


@pytest.mark.slow
def test_in_a_kernel_the_stub_is_one_line_and_other_errors_are_tracebacks():
    import nbclient

    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("from coursepkg.config import setup\nsetup()"),
        code('def vae_loss(x):\n    """doc"""\n    # YOUR CODE HERE\n    raise NotImplementedError()'),
        code("y = vae_loss(1) + 1"),
        code("def mine():\n    raise NotImplementedError('my own')\nmine()"),
        code("1 / 0"),
    ])
    nbclient.NotebookClient(nb, timeout=120, allow_errors=True, kernel_name="python3").execute()
    [stub], [own], [other] = (c.outputs for c in nb.cells[2:])
    assert stub.output_type == "error" and stub.ename == "NotImplementedError"
    assert stub.traceback == [unfinished.message("vae_loss")]
    assert own.output_type == "error" and len(own.traceback) > 1 and "my own" in "".join(own.traceback)
    assert other.ename == "ZeroDivisionError" and len(other.traceback) > 1
