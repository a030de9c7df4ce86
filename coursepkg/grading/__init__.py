"""Autograded checks: ``check(exercise_id, answer)`` and everything a check is written with.

- :mod:`coursepkg.grading.core`    results, the registry (:func:`register`), :func:`check`
- :mod:`coursepkg.grading.checks`  one module per chapter (``chNN_slug.py``), registering its checks

Notebooks only ever need ``from coursepkg.grading import check``.
"""

from coursepkg.grading.core import (  # noqa: F401
    Check,
    CheckFailure,
    CheckResult,
    Mistake,
    call,
    check,
    close,
    compare,
    describe_inputs,
    fmt,
    list_checks,
    random_cases,
    register,
    require_callable,
    require_tensor,
)
