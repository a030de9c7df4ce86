"""Autograded checks: ``check(exercise_id, answer)`` and everything a check is written with.

- :mod:`coursepkg.grading.core`    results, the registry (:func:`register`), :func:`check`
- :mod:`coursepkg.grading.kit`     the check kit: the declarative forms (:func:`function_check`,
  :func:`random_check`, :func:`loss_check`) and the helpers; its docstring says how to write a check
- :mod:`coursepkg.grading.checks`  one module per chapter (``chNN_slug.py``), registering its checks

Notebooks only ever need ``from coursepkg.grading import check``.
"""

from coursepkg.grading.core import (  # noqa: F401
    Check,
    CheckFailure,
    CheckResult,
    Mistake,
    check,
    get_check,
    list_checks,
    register,
)
from coursepkg.grading.kit import (  # noqa: F401
    Also,
    Case,
    Option,
    Recorder,
    Slip,
    call,
    close,
    compare,
    compare_gradients,
    describe_inputs,
    distinct,
    find_slips,
    fmt,
    function_check,
    independence_test,
    loss_check,
    normal_test,
    random_cases,
    random_check,
    require_callable,
    require_like,
    require_tensor,
    statistical_failure,
    tolerance,
    uniform_test,
    unpack,
    ztest,
)
