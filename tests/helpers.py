"""Shared helpers of the test suite."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def solution_notebooks() -> list[Path]:
    return sorted((ROOT / "solutions").glob("*.ipynb"))


def notebook_check_ids(path: Path) -> list[str]:
    from coursepkg.instructor.batch import CHECK_CALL

    nb = nbformat.read(path, as_version=4)
    return [i for c in nb.cells if c.cell_type == "code" for i in CHECK_CALL.findall(c.source)]


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_passes(exercise_id, fn):
    """Assert that the check of ``exercise_id`` accepts ``fn``; return the result."""
    from coursepkg.grading import check

    r = check(exercise_id, fn, verbose=False)
    assert r.passed, r.message
    return r


def check_fails(exercise_id, fn, *words):
    """Assert that the check rejects ``fn`` with a message containing every one of ``words``."""
    from coursepkg.grading import check

    r = check(exercise_id, fn, verbose=False)
    assert not r.passed, f"{exercise_id} accepted a wrong answer"
    for w in words:
        assert w.lower() in r.message.lower(), f"expected {w!r} in: {r.message}"
    return r


def seeded(seed: int = 0):
    """A fresh CPU ``torch.Generator`` with this seed."""
    import torch

    return torch.Generator().manual_seed(seed)


def skewed_mixture_1d():
    """Chapter 08's 1-D mixture: weights (.3, .7), means (-1, 1.5), variances (.05, .2), float64. Unequal and
    narrow components, far from Gaussian, so that nothing the diffusion tests check is exact by accident."""
    import torch

    from coursepkg import gmm

    f64 = torch.float64
    return gmm.GMM(torch.tensor([0.3, 0.7], dtype=f64), torch.tensor([[-1.0], [1.5]], dtype=f64),
                   torch.tensor([[[0.05]], [[0.2]]], dtype=f64))


def first_tensor(*args):
    """The first tensor among an answer's arguments (for hostile answers that return or mimic an input)."""
    import torch

    return next(a for a in args if isinstance(a, torch.Tensor))


def zeros_like_first(*args):
    """A hostile answer: zeros shaped like the first tensor argument."""
    import torch

    return torch.zeros_like(first_tensor(*args))
