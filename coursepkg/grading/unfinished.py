"""One line instead of a traceback when a notebook cell uses an exercise that is not written yet.

A generated exercise's answer cell ends in the stub ``# YOUR CODE HERE`` / ``raise
NotImplementedError()``. The check cell below it reports that in one line, but the demo cells that
put the function to work would end in a raw ``NotImplementedError`` traceback. In IPython,
:func:`install` (called by :func:`coursepkg.config.setup`) shows instead::

    NotImplementedError: `vae_loss` is not written yet: fill in its cell marked YOUR CODE HERE above, ...

Only a ``NotImplementedError`` raised by that exact stub is shortened; any other error, including a
``NotImplementedError`` the student's own code raises, shows its usual traceback. The cell still ends
in an error, so "Run all" stops there as before.
"""

from __future__ import annotations

import linecache

STUB_LINES = ("# YOUR CODE HERE", "raise NotImplementedError()")


def stub_function(tb) -> str | None:
    """The name of the function whose generator stub raised, if the traceback ``tb`` ends in one."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return None
    code, lineno = last.tb_frame.f_code, last.tb_lineno
    here = linecache.getline(code.co_filename, lineno).strip()
    above = linecache.getline(code.co_filename, lineno - 1).strip()
    if (above, here) != STUB_LINES or code.co_name == "<module>":
        return None
    return code.co_name


def message(name: str) -> str:
    return (f"NotImplementedError: `{name}` is not written yet: fill in its cell marked YOUR CODE HERE above, "
            "run that cell, then run this one again")


def _handler(shell, etype, value, tb, tb_offset=None):
    name = stub_function(tb)
    if name is None:  # not the stub: the usual traceback
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    else:
        stb = [message(name)]
    shell._showtraceback(etype, value, stb)  # the hook IPython and ipykernel display tracebacks through
    return stb


def install() -> bool:
    """Shorten the stub's traceback in the running IPython shell; ``False`` outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with Jupyter
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((NotImplementedError,), _handler)
    return True
