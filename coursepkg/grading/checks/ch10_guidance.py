r"""Checks of the chapter 10 exercises (``solutions/10_guidance.ipynb``): conditioning and guidance.

The answers work with plain tensors, in the package's conventions: a schedule is its ``alpha_bar``, ``T + 1``
entries indexed by ``t`` itself (``alpha_bar[0] = 1``; the random schedules, ``_schedule``, are chapter 08's);
labels are integer tensors, one per row, and ``-1`` (:data:`coursepkg.diffusion.guidance.NULL`) is the null label,
"no class"; the classifier-free scale ``s`` is the course's: ``eps_u + s (eps_c - eps_u)``, ``s = 0`` the
unconditional and ``s = 1`` the conditional prediction (Ho and Salimans' ``w`` is ``s - 1``).

- ``10.class_score`` (the Bayes-rule score ``grad log p(y | x_t)`` of a labelled isotropic mixture),
  ``10.guided_eps`` (classifier guidance on a noise prediction) and ``10.cfg`` (the classifier-free combination)
  are deterministic formulas: :func:`~coursepkg.grading.kit.function_check` against
  :func:`coursepkg.diffusion.exact.class_score`, :func:`coursepkg.diffusion.guidance.guided_eps` and
  :func:`~coursepkg.diffusion.guidance.cfg_combine`, run in float64 behind the exercise's signatures. The
  mixtures' components are narrow or broad enough, and the steps ``t`` early and late enough (1 and ``T`` are
  always among them), that a component left unnoised, a variance not noised, an ``alpha_bar`` off by one step
  each give values of their own; shapes with ``N == D`` (or ``W == N``) let a missing reshape broadcast silently.
  The scales of ``10.cfg`` avoid 0 and 1, where the answer's value would be one of its inputs.
- ``10.classifier_grad`` (``grad_{x_t} log p_phi(y | x_t, t)`` by autograd) and ``10.cfg_prediction`` (the guided
  prediction of a conditional network) are handed a small module of the check's (:class:`_Classifier`,
  :class:`_CondDenoiser`: fixed random weights, any dtype, inputs validated with messages that name the slip).
  The gradient is compared with a float64 reference and must leave the classifier's parameters without
  ``.grad`` and the caller's ``x_t`` as it was, and work under ``torch.no_grad()`` (samplers run there), which
  some trials use; a gradient that keeps its graph (``create_graph=True``, ``torch.func.grad``) is accepted, as
  under a sampler's ``torch.no_grad()`` it has none. The guided prediction is compared with the float64
  reference computed from the model; what the model was called with (a :class:`~coursepkg.grading.kit.Recorder`)
  names label dropout left on at sampling time.
- ``10.label_dropout`` is random, with integer output, so its check is a custom one: on batches of hundreds to
  thousands of labels, the dropped rows must be ``-1`` (the others unchanged, ``y`` untouched, its dtype kept),
  their number within :data:`~coursepkg.grading.kit.N_SIGMA` binomial standard errors of ``N p``, with no pattern
  along the rows (lag correlations) or across the classes (a chi-square of the per-class rates), ``p = 0`` and
  ``p = 1`` exact, a number dropped that varies from call to call (not ``round(p N)`` every time), and the coins
  drawn from ``generator``: the same seed gives the same labels, another seed and a second call other ones.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from coursepkg import gmm as G
from coursepkg.diffusion import exact, guidance
from coursepkg.grading.checks.ch08_ddpm_derivations import _from_alpha_bar, _schedule, _steps
from coursepkg.grading.kit import (
    N_SIGMA,
    Case,
    CheckFailure,
    Mistake,
    Recorder,
    Slip,
    call,
    compare,
    describe_inputs,
    distinct,
    explaining_errors,
    function_check,
    random_cases,
    register,
    require_callable,
    require_like,
    require_tensor,
)

F64 = torch.float64
NULL = guidance.NULL


def _64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", F64)


def _row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` ``(N,)`` shaped ``(N, 1, ..., 1)`` to broadcast against ``like``."""
    return values.reshape(-1, *[1] * (like.dim() - 1))


# --------------------------------------------------------------------------------------------------
# 10.class_score: grad_{x_t} log p(y | x_t) of a labelled isotropic mixture
# --------------------------------------------------------------------------------------------------
# (N, D, K, C, T, t): t = T and t = 1 (no noise to speak of), N == D == K, one dimension, many components
SCORE_SPECS = [(30, 2, 4, 2, 10, 6), (7, 1, 3, 3, 8, 1), (3, 3, 3, 2, 12, 12), (20, 2, 5, 3, 9, 9),
               (12, 1, 4, 2, 6, 3)]
SCORE_SEED = 10100


def _mixture(weights, means, variances) -> G.GMM:
    eye = torch.eye(means.shape[1], dtype=F64)
    return G.GMM(_64(weights), _64(means), _64(variances)[:, None, None] * eye)


def _class_score(xt, t, y, weights, means, variances, labels, alpha_bar):
    """:func:`coursepkg.diffusion.exact.class_score` behind the exercise's signature: the score of class ``y``'s
    noised mixture minus the score of the whole one, at step ``t`` (an int)."""
    data = _mixture(weights, means, variances)
    return exact.class_score(data, labels.cpu(), _64(xt), t, _from_alpha_bar(alpha_bar), y).to(xt)


def _labels(gen: torch.Generator, K: int, C: int) -> torch.Tensor:
    """The class of each of ``K`` components, every class ``0..C-1`` used, in random order."""
    lab = torch.cat([torch.arange(C), torch.randint(0, C, (K - C,), generator=gen)])
    return lab[torch.randperm(K, generator=gen)]


def _score_inputs(case: Case, spec) -> dict:
    N, D, K, C, T, t = spec
    g = case.gen
    _, alpha_bar = _schedule(case, T)
    weights = torch.softmax(0.7 * torch.randn(K, generator=g, dtype=F64), 0)
    means = 2.0 * torch.randn(K, D, generator=g, dtype=F64)
    variances = 0.1 + 0.7 * torch.rand(K, generator=g, dtype=F64)
    labels = _labels(g, K, C)
    ab = float(_64(alpha_bar)[t])
    x0 = _mixture(weights, means, variances).sample(N, generator=g).x
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(N, D, generator=g, dtype=F64)
    xt = xt + 0.5 * torch.randn(N, D, generator=g, dtype=F64)             # some points between the components
    y = int(labels[int(torch.randint(0, K, (), generator=g))])
    return {"xt": case.to(xt), "t": t, "y": y, "weights": case.to(weights), "means": case.to(means),
            "variances": case.to(variances), "labels": labels.to(case.device), "alpha_bar": alpha_bar}


def _iso_score(x, w, m, v) -> torch.Tensor:
    """The score at ``x`` ``(N, D)`` of ``sum_k w_k N(m_k, v_k I)`` (``w`` need not be normalised)."""
    d = x[:, None, :] - m[None]                                              # (N, K, D)
    logr = w.log()[None] - 0.5 * x.shape[1] * v.log()[None] - 0.5 * (d**2).sum(-1) / v[None]
    r = torch.softmax(logr, 1)
    return (r[..., None] * (-d / v[None, :, None])).sum(1)


def _pulls(x, m, v):
    return -(x[:, None, :] - m[None]) / v[None, :, None]                   # (N, K, D)


def _score_slip(*, mean=lambda m, ab: ab.sqrt() * m, var=lambda v, ab: ab * v + 1 - ab, step=lambda t: t,
                weights=lambda w: w, combine=lambda cond, marg: cond - marg):
    """The class score with some of its parts replaced: the noised ``mean(m, ab)`` and ``var(v, ab)``, the
    ``step(t)`` read from alpha_bar, the ``weights``, and how the two scores are ``combine`` d."""
    def value(xt, t, y, w, m, v, labels, alpha_bar):
        ab = alpha_bar[step(t)]
        mk, vk, wk = mean(m, ab), var(v, ab), weights(w)
        keep = labels == y
        return combine(_iso_score(xt, wk[keep], mk[keep], vk[keep]), _iso_score(xt, wk, mk, vk))
    return value


def _unnormalised_class(xt, t, y, w, m, v, labels, alpha_bar):
    """The class's score with the responsibilities of the whole mixture, not renormalised within the class."""
    ab = alpha_bar[t]
    mk, vk = ab.sqrt() * m, ab * v + 1 - ab
    d = xt[:, None, :] - mk[None]
    r = torch.softmax(w.log()[None] - 0.5 * xt.shape[1] * vk.log()[None] - 0.5 * (d**2).sum(-1) / vk[None], 1)
    keep = (labels == y).to(r.dtype)
    cond = (r[..., None] * keep[None, :, None] * _pulls(xt, mk, vk)).sum(1)
    return cond - _iso_score(xt, w, mk, vk)


SCORE_HINT = ("noise every component: mean sqrt(alpha_bar_t) mu_k, variance alpha_bar_t var_k + 1 - alpha_bar_t; "
              "then grad log p(y | x_t) = grad log q(x_t | y) - grad log q(x_t), the score of class y's components "
              "(their responsibilities renormalised within the class) minus the score of all of them")


def _score_tol(case: Case) -> tuple[float, float]:
    """float32: an absolute 2e-4 (the two scores, of size up to 30, nearly cancel where the class is certain)."""
    return (1e-7, 1e-9) if case.dtype == F64 else (1e-4, 2e-4)


function_check(
    "10.class_score", "the Bayes-rule score grad log p(y | x_t) of a labelled mixture",
    solution=_class_score, inputs=_score_inputs, specs=SCORE_SPECS, seed=SCORE_SEED, what="grad log p(y | x_t)",
    describe=["xt", "t", "means"], tol=_score_tol,
    shape_hints=[((N,), "the score is a gradient: one vector per point, shaped like xt (N, D)")
                 for N, *_ in SCORE_SPECS],
    mistakes=[
        Slip("p(y | x) of the clean mixture used for p(y | x_t): the components not noised", "x_t is a noised "
             f"point: its classifier is Bayes' rule on the noised mixture q(x_t); {SCORE_HINT}",
             _score_slip(mean=lambda m, ab: m, var=lambda v, ab: v)),
        Slip("the means not scaled by sqrt(alpha_bar_t)", f"x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) "
             f"eps shrinks the data: {SCORE_HINT}", _score_slip(mean=lambda m, ab: m)),
        Slip("the variances not noised (var_k where alpha_bar_t var_k + 1 - alpha_bar_t belongs)", SCORE_HINT,
             _score_slip(var=lambda v, ab: v)),
        Slip("1 - alpha_bar_t missing from the noised variance", f"the noise adds its own variance: {SCORE_HINT}",
             _score_slip(var=lambda v, ab: ab * v)),
        Slip("the means scaled by alpha_bar_t instead of its square root", SCORE_HINT,
             _score_slip(mean=lambda m, ab: ab * m)),
        Slip("the variances taken for standard deviations (squared again)", f"`variances` holds var_k, the "
             f"variance itself: {SCORE_HINT}", _score_slip(var=lambda v, ab: ab * v**2 + 1 - ab)),
        Slip("t off by one: alpha_bar[t - 1] used for alpha_bar_t", "alpha_bar has T + 1 entries indexed by t "
             "itself: alpha_bar_t is alpha_bar[t]", _score_slip(step=lambda t: t - 1)),
        Slip("the score of q(x_t | y) alone: the marginal's score not subtracted", "p(y | x_t) = q(x_t | y) p(y) / "
             "q(x_t), so its gradient is the difference of the two scores (p(y) is a constant)",
             _score_slip(combine=lambda cond, marg: cond)),
        Slip("the score of the whole mixture q(x_t): the class not used", SCORE_HINT,
             _score_slip(combine=lambda cond, marg: marg)),
        Slip("the two scores subtracted the wrong way round", "grad log p(y | x_t) = grad log q(x_t | y) - grad log "
             "q(x_t): the class's score first", _score_slip(combine=lambda cond, marg: marg - cond)),
        Slip("the class's responsibilities not renormalised within the class", "q(x_t | y) is a mixture of class "
             "y's components alone: their responsibilities for x_t sum to one among themselves (a softmax over "
             "the class's components)", _unnormalised_class),
        Slip("the mixture weights ignored", f"the responsibilities weigh each component by pi_k: {SCORE_HINT}",
             _score_slip(weights=lambda w: torch.ones_like(w))),
    ])


# --------------------------------------------------------------------------------------------------
# 10.classifier_grad: grad_{x_t} log p_phi(y | x_t, t) by autograd
# --------------------------------------------------------------------------------------------------
# (shape of x_t, number of classes K, T, called under torch.no_grad()): N == D, N == K, an image-like batch
CLF_SPECS = [((8, 8), 3, 6, False), ((20, 2), 4, 10, True), ((6, 2, 3), 6, 8, False), ((12, 3), 5, 9, True)]
CLF_SEED = 10200
HIDDEN = 16


class _Classifier(nn.Module):
    """The noise-aware classifier handed to the answer: ``logits = W2 tanh(W1 x + b1 + emb[t]) + b2`` on the
    flattened ``x_t``, computed in the dtype of ``x_t`` (its parameters are cast), with parameters that require
    grad as a trained network's do. It refuses what is not a batch shaped like the data or not a step."""

    def __init__(self, W1, b1, emb, W2, b2, event):
        super().__init__()
        self.W1, self.b1, self.emb = nn.Parameter(W1.clone()), nn.Parameter(b1.clone()), nn.Parameter(emb.clone())
        self.W2, self.b2 = nn.Parameter(W2.clone()), nn.Parameter(b2.clone())
        self.event, self.num_classes = tuple(event), W2.shape[0]

    @classmethod
    def random(cls, case: Case, event, K: int, T: int) -> _Classifier:
        D = math.prod(event)
        return cls(case.randn(HIDDEN, D, scale=1.5 / math.sqrt(D)), case.randn(HIDDEN, scale=0.5),
                   case.randn(T + 1, HIDDEN, scale=0.5), case.randn(K, HIDDEN, scale=1.2), case.randn(K, scale=0.5),
                   event)

    def __repr__(self) -> str:
        return f"<the classifier of the check: x_t of shape (N, {', '.join(map(str, self.event))}) -> logits (N, " \
               f"{self.num_classes})>"

    @property
    def T(self) -> int:
        return self.emb.shape[0] - 1

    def steps(self, xt, t) -> torch.Tensor:
        if not isinstance(xt, torch.Tensor) or not xt.is_floating_point() or tuple(xt.shape[1:]) != self.event:
            got = list(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
            raise CheckFailure(f"the classifier was called with x_t of shape {got}: call it as classifier(x_t, t) "
                               f"with x_t shaped (N, {', '.join(map(str, self.event))}), as given")
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise CheckFailure(f"the classifier was called with t of type {type(t).__name__}: pass the steps t as "
                               "given, an integer tensor (N,)")
        steps = torch.as_tensor(t).cpu()
        if steps.is_floating_point() or steps.dtype == torch.bool or steps.dim() > 1:
            raise CheckFailure("the classifier was called with t of dtype "
                               f"{str(steps.dtype).replace('torch.', '')} and shape {list(steps.shape)}: pass the "
                               "integer steps t as given, one per row")
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > self.T):
            raise CheckFailure(f"the classifier was called with steps outside 0..T = 0..{self.T}: pass t as given")
        steps = steps.expand(xt.shape[0]) if steps.dim() == 0 else steps
        if steps.shape[0] != xt.shape[0]:
            raise CheckFailure(f"the classifier was called with {steps.shape[0]} steps for {xt.shape[0]} rows of x_t")
        return steps

    def logits(self, xt, t, params) -> torch.Tensor:
        h = torch.tanh(xt.flatten(1) @ params["W1"].T + params["b1"] + params["emb"][t])
        return h @ params["W2"].T + params["b2"]

    def forward(self, xt, t):
        steps = self.steps(xt, t).to(xt.device)
        return self.logits(xt, steps, {k: p.to(xt) for k, p in self.named_parameters()})

    def reference(self, xt, t) -> torch.Tensor:
        """The logits in float64 on the CPU, from float64 copies of the parameters (no ``.grad`` is touched)."""
        return self.logits(xt, t.cpu(), {k: _64(p) for k, p in self.named_parameters()})


def _classifier_grad(classifier, xt, t, y):
    """A correct answer (the registered solution): autograd of the summed log-probabilities of the labels with
    respect to a leaf copy of ``xt``, grad mode switched on (so that it works under ``torch.no_grad()``)."""
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, t), dim=1)
        (grad,) = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), x)
    return grad


def _grad_of(clf: _Classifier, xt, t, y, objective) -> torch.Tensor:
    """``grad_x objective(logits, y)`` in float64 from the classifier's float64 reference."""
    with torch.enable_grad():
        x = _64(xt).requires_grad_(True)
        (g,) = torch.autograd.grad(objective(clf.reference(x, t), y.cpu()), x)
    return g


def _log_py(logits, y):
    return torch.log_softmax(logits, 1).gather(1, y[:, None]).sum()


CLF_HINT = ("x = xt.detach().requires_grad_(True); log_p = torch.log_softmax(classifier(x, t), dim=1); the gradient "
            "of log_p[torch.arange(N), y].sum() with respect to x, by torch.autograd.grad")
PARAMS = ("the gradient taken with respect to the classifier's parameters instead of x_t", "guidance needs "
          "grad_{x_t} log p(y | x_t): differentiate with respect to the input, torch.autograd.grad(log_py, x) with "
          "x = xt.detach().requires_grad_(True), not with respect to classifier.parameters() (and not with "
          ".backward(), which fills the parameters' .grad)")
NO_GRAD_MODE = ("no graph from x_t to log p(y | x_t): grad mode off (samplers call this under torch.no_grad()), x_t "
                "not a leaf that requires grad, or a .detach() in between", "wrap the computation in `with "
                "torch.enable_grad():`, make x = xt.detach().requires_grad_(True) and compute log p from x with torch "
                "operations")
BACKWARD = ("the right gradient, but .backward() filled the classifier's parameters' .grad", "at every sampling "
            "step this would accumulate gradients in a network nobody trains: take the gradient with respect to x "
            "alone, (grad,) = torch.autograd.grad(log_py, x)")
INPUT_GRAD = ("requires_grad switched on for the caller's x_t", "work on a copy, x = xt.detach().requires_grad_(True): "
              "the sampler's tensor must stay as it was given")


def _clf_mistakes(clf, xt, t, y):
    def lp(logits, dim=1):
        return torch.log_softmax(logits, dim)
    return [
        ("the logit of y without log_softmax (the normaliser's gradient missing)", "log p(y | x_t) = logit_y - "
         f"logsumexp(logits): both terms depend on x_t; {CLF_HINT}",
         _grad_of(clf, xt, t, y, lambda lg, y: lg.gather(1, y[:, None]).sum())),
        ("the probability p(y | x_t) differentiated instead of its log", f"guidance adds grad log p(y | x_t) "
         f"to the score: {CLF_HINT}", _grad_of(clf, xt, t, y, lambda lg, y: lg.softmax(1).gather(1, y[:, None]).sum())),
        ("log_softmax over the batch (dim 0) instead of the classes", f"each row's logits are normalised over its "
         f"classes, dim=1: {CLF_HINT}", _grad_of(clf, xt, t, y, lambda lg, y: lp(lg, 0).gather(1, y[:, None]).sum())),
        ("log_p[:, y] picks every row's label in every row", "index one label per row: log_p[torch.arange(N), y] or "
         "log_p.gather(1, y[:, None])", _grad_of(clf, xt, t, y, lambda lg, y: lp(lg)[:, y].sum())),
        ("a mean over the batch instead of the sum", "each row's gradient must be that row's own grad log p(y_i | "
         "x_i): sum the log-probabilities (a mean divides every row's gradient by N)",
         _grad_of(clf, xt, t, y, lambda lg, y: _log_py(lg, y) / lg.shape[0])),
        ("the gradient of the cross-entropy -log p(y | x_t), not of log p(y | x_t)", f"the sign matters: guidance "
         f"climbs log p(y | x_t); {CLF_HINT}", _grad_of(clf, xt, t, y, lambda lg, y: -_log_py(lg, y))),
        ("the gradient of F.cross_entropy (the mean of -log p), not of log p(y | x_t)", f"no minus sign and no mean: "
         f"{CLF_HINT}", _grad_of(clf, xt, t, y, lambda lg, y: F.cross_entropy(lg, y))),
        ("the log-probabilities of every class summed instead of the one of y", f"pick the label's entry: {CLF_HINT}",
         _grad_of(clf, xt, t, y, lambda lg, y: lp(lg).sum())),
    ]


def _grads_left(clf: _Classifier) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().gt(0).any()) for p in clf.parameters())


def _judge_classifier_grad(got, clf: _Classifier, xt, t, y, case: Case, inputs: str) -> None:
    shapes = {tuple(p.shape) for p in clf.parameters()}
    if isinstance(got, (tuple, list)) and got and all(isinstance(g, torch.Tensor) and tuple(g.shape) in shapes
                                                       for g in got):
        raise Mistake(*PARAMS)
    if got is None and _grads_left(clf):
        raise Mistake(*PARAMS)
    require_tensor(got, "the gradient")
    if tuple(got.shape) != tuple(xt.shape) and tuple(got.shape) in shapes:
        raise Mistake(*PARAMS)
    require_like(got, xt.shape, dtype=case.dtype, device=case.device, what="the gradient", inputs=inputs,
                 shape_hints=[((xt.shape[0],), "the gradient with respect to x_t is shaped like x_t"),
                              ((), "the gradient with respect to x_t is shaped like x_t, one value per entry")])
    expected = _grad_of(clf, xt, t, y, _log_py).to(**case.like)
    rtol, atol = (1e-7, 1e-9) if case.dtype == F64 else (1e-4, 1e-5)
    mistakes = [(n, h, v.to(**case.like)) for n, h, v in _clf_mistakes(clf, xt, t, y)]
    if bool((got.detach() == 0).all()) and _grads_left(clf):
        raise Mistake(*PARAMS)
    compare(got, expected, what="the gradient", inputs=inputs, rtol=rtol, atol=atol,
            mistakes=distinct(mistakes, expected, rtol, atol))
    if _grads_left(clf):
        raise Mistake(*BACKWARD)
    if xt.requires_grad:
        raise Mistake(*INPUT_GRAD)


@register("10.classifier_grad", "the classifier's gradient grad_{x_t} log p_phi(y | x_t, t), by autograd",
          solution=_classifier_grad)
def check_classifier_grad(answer):
    f = explaining_errors(require_callable(answer), [("does not require grad", *NO_GRAD_MODE),
                                                      ("does not have a grad_fn", *NO_GRAD_MODE)])
    trials = [(case, spec) for case in random_cases(CLF_SEED) for spec in CLF_SPECS]
    quiet = 0
    for i, (case, (shape, K, T, no_grad)) in enumerate(trials):
        torch.manual_seed(CLF_SEED + i)
        clf = _Classifier.random(case, shape[1:], K, T)
        xt = case.randn(*shape, scale=1.5)
        t = _steps(case, shape[0], T)
        y = torch.randint(0, K, (shape[0],), generator=case.gen).to(case.device)
        inputs = describe_inputs(xt=xt, K=K) + (", called under torch.no_grad()" if no_grad else "")
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            got = call(f, clf, xt, t, y)
        _judge_classifier_grad(got, clf, xt, t, y, case, inputs)
        quiet += no_grad
    return (f"matches the reference on {len(trials)} random classifiers and inputs ({quiet} of them called under "
            "torch.no_grad(), as a sampler calls it), the classifier's parameters left without gradients and the "
            "caller's x_t as it was")


# --------------------------------------------------------------------------------------------------
# 10.guided_eps: classifier guidance on a noise prediction
# --------------------------------------------------------------------------------------------------
# (shape, T, gamma): N == D, W == N, gamma below and above 1 and 1 itself
GUIDED_SPECS = [((6, 6), 7, 2.0), ((9, 3), 12, 0.5), ((4, 2, 3, 4), 9, 3.0), ((5, 2), 10, 1.0)]


def _guided_eps(eps, grad_log_py, t, alpha_bar, gamma):
    """:func:`coursepkg.diffusion.guidance.guided_eps` behind the exercise's signature."""
    return guidance.guided_eps(_64(eps), _64(grad_log_py), t.cpu(), gamma, _from_alpha_bar(alpha_bar)).to(eps)


def _guided_inputs(case: Case, spec) -> dict:
    shape, T, gamma = spec
    _, alpha_bar = _schedule(case, T)
    return {"eps": case.randn(*shape), "grad_log_py": case.randn(*shape, scale=2.0), "t": _steps(case, shape[0], T),
            "alpha_bar": alpha_bar, "gamma": gamma}


def _guided(scale=lambda ab, t: (1 - ab[t]).sqrt(), *, sign=-1.0, on_eps=lambda g: 1.0, on_grad=lambda g: g):
    """Guidance with its parts replaced: the ``scale(alpha_bar, t)`` of the gradient (per row), its ``sign``, the
    factors ``on_eps(gamma)`` and ``on_grad(gamma)``."""
    def value(eps, grad, t, ab, gamma):
        return on_eps(gamma) * eps + sign * on_grad(gamma) * _row(scale(ab, t), eps) * grad
    return value


def _not_reshaped(eps, grad, t, ab, gamma):
    """``alpha_bar[t]`` of shape ``(N,)`` broadcast along the last dimension (where that is possible)."""
    if eps.shape[-1] != t.shape[0]:
        return None
    return eps - gamma * (1 - ab[t]).sqrt() * grad


GUIDED_HINT = ("eps_hat = eps - gamma * sqrt(1 - alpha_bar_t) * grad_log_py, with alpha_bar_t = alpha_bar[t] reshaped "
               "to (N, 1, ..., 1)")
NOISE_IS_SCORE = ("a noise prediction is minus sqrt(1 - alpha_bar_t) times a score, so adding gamma * grad log "
                  "p(y | x_t) to the score subtracts gamma * sqrt(1 - alpha_bar_t) * grad from the noise: "
                  + GUIDED_HINT)

function_check(
    "10.guided_eps", "classifier guidance on a noise prediction",
    solution=_guided_eps, inputs=_guided_inputs, specs=GUIDED_SPECS, seed=10300, what="the guided noise",
    describe=["eps", "t", "gamma"],
    mistakes=[
        Slip("the gradient not scaled by sqrt(1 - alpha_bar_t)", NOISE_IS_SCORE,
             _guided(scale=lambda ab, t: torch.ones_like(ab[t]))),
        Slip("sqrt(alpha_bar_t) where sqrt(1 - alpha_bar_t) belongs", NOISE_IS_SCORE,
             _guided(scale=lambda ab, t: ab[t].sqrt())),
        Slip("1 - alpha_bar_t without its square root", NOISE_IS_SCORE, _guided(scale=lambda ab, t: 1 - ab[t])),
        Slip("the gradient divided by sqrt(1 - alpha_bar_t) instead of multiplied", f"eps = -sqrt(1 - alpha_bar_t) * "
             f"score turns a score into a noise (dividing turns a noise into a score): {GUIDED_HINT}",
             _guided(scale=lambda ab, t: 1 / (1 - ab[t]).sqrt())),
        Slip("the gradient added to the noise (wrong sign)", f"the noise points away from the data, minus the "
             f"score: {NOISE_IS_SCORE}", _guided(sign=1.0)),
        Slip("gamma applied to eps too", f"gamma weighs the classifier only; the model's noise keeps its "
             f"factor 1: {GUIDED_HINT}", _guided(on_eps=lambda g: g)),
        Slip("gamma on eps instead of on the gradient", GUIDED_HINT,
             _guided(on_eps=lambda g: g, on_grad=lambda g: 1.0)),
        Slip("t off by one: alpha_bar[t - 1] used for alpha_bar_t", "alpha_bar has T + 1 entries indexed by t "
             "itself: alpha_bar_t is alpha_bar[t]", _guided(scale=lambda ab, t: (1 - ab[t - 1]).sqrt())),
        Slip("sqrt(beta_t) = sqrt(1 - alpha_t), one step's noise, where sqrt(1 - alpha_bar_t) belongs",
             f"x_t carries the noise of all t steps: {GUIDED_HINT}",
             _guided(scale=lambda ab, t: (1 - ab[t] / ab[t - 1]).sqrt())),
        Slip("alpha_bar[t] not reshaped: shape (N,) broadcast along the last dimension", f"alpha_bar[t] has one "
             f"entry per row; view it as (N, 1, ..., 1): {GUIDED_HINT}", _not_reshaped),
    ])


# --------------------------------------------------------------------------------------------------
# 10.cfg: the classifier-free combination
# --------------------------------------------------------------------------------------------------
CFG_SPECS = [((6, 6), 3.0), ((9, 3), 0.5), ((4, 2, 3, 4), 7.5), ((5, 1), 2.0)]          # (shape, scale)
CFG_HINT = ("eps_hat = eps_uncond + scale * (eps_cond - eps_uncond): scale = 0 gives the unconditional prediction, "
            "scale = 1 the conditional one, more extrapolates beyond it")
HO_SALIMANS = ("Ho and Salimans' (1 + w) eps_cond - w eps_uncond with w = scale", "in this course the scale is "
               "counted from the unconditional model, so that scale = 1 gives the conditional prediction itself; Ho "
               f"and Salimans' w is scale - 1: {CFG_HINT}")


def _cfg_eps(eps_cond, eps_uncond, scale):
    """:func:`coursepkg.diffusion.guidance.cfg_combine` behind the exercise's signature."""
    return guidance.cfg_combine(_64(eps_cond), _64(eps_uncond), scale).to(eps_cond)


def _cfg_inputs(case: Case, spec) -> dict:
    shape, scale = spec
    return {"eps_cond": case.randn(*shape), "eps_uncond": case.randn(*shape, scale=0.8, shift=0.3), "scale": scale}


def _combination_slips(mistake=lambda name, hint, fn: Slip(name, hint, fn)):
    """The typical wrong combinations, as ``mistake(name, hint, fn(eps_c, eps_u, s))`` (for ``10.cfg`` and
    ``10.cfg_prediction``)."""
    return [
        mistake("the scale applied from the conditional side: eps_cond + s (eps_uncond - eps_cond)", f"start from "
                f"the unconditional prediction and move towards (and past) the conditional one: {CFG_HINT}",
                lambda c, u, s: c + s * (u - c)),
        mistake(*HO_SALIMANS, lambda c, u, s: (1 + s) * c - s * u),
        mistake("scale * eps_cond + eps_uncond (the unconditional prediction added, not subtracted)", CFG_HINT,
                lambda c, u, s: s * c + u),
        mistake("the difference alone: scale * (eps_cond - eps_uncond) without eps_uncond", CFG_HINT,
                lambda c, u, s: s * (c - u)),
        mistake("scale - 1 where scale belongs", f"do not convert the scale: {CFG_HINT}",
                lambda c, u, s: u + (s - 1) * (c - u)),
        mistake("the scale ignored: the conditional prediction returned", CFG_HINT, lambda c, u, s: c + 0 * u),
        mistake("the scale ignored: the unconditional prediction returned", CFG_HINT, lambda c, u, s: u + 0 * c),
    ]


function_check(
    "10.cfg", "the classifier-free guidance combination",
    solution=_cfg_eps, inputs=_cfg_inputs, specs=CFG_SPECS, seed=10400, what="the guided noise",
    describe=["eps_cond", "scale"], mistakes=_combination_slips())


# --------------------------------------------------------------------------------------------------
# 10.cfg_prediction: the guided prediction of a conditional network at sampling time
# --------------------------------------------------------------------------------------------------
# (shape, K, T, scale): the unconditional (0) and the conditional (1) model, N == D, W == N
PRED_SPECS = [((6, 6), 3, 8, 3.0), ((9, 3), 4, 12, 0.0), ((4, 2, 3, 4), 5, 9, 1.0), ((5, 2), 2, 10, 7.5),
              ((8, 3), 4, 6, 0.5)]
PRED_SEED = 10500


class _CondDenoiser(nn.Module):
    """The conditional noise predictor handed to the answer: ``a * x_t + b * tanh(x_t) * temb[t] + cemb[y + 1] *
    (1 + tanh(x_t) / 2)``, elementwise, row 0 of ``cemb`` the null label's (``-1``; ``y=None`` means null for
    every row, as for the package's networks). It runs in the dtype of ``x_t`` and refuses labels outside
    ``-1..K-1``, float labels and anything that is not a step, with messages naming the slip."""

    def __init__(self, a, b, temb, cemb):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())
        self.temb, self.cemb = nn.Parameter(temb.clone()), nn.Parameter(cemb.clone())
        self.num_classes = cemb.shape[0] - 1

    @classmethod
    def random(cls, case: Case, event, K: int, T: int) -> _CondDenoiser:
        return cls(case.randn(*event, scale=0.3, shift=0.5), case.randn(*event, scale=0.5), case.randn(T + 1),
                   case.randn(K + 1, *event))

    def __repr__(self) -> str:
        return f"<the conditional model of the check: model(xt, t, y), classes 0..{self.num_classes - 1}, null -1>"

    @property
    def T(self) -> int:
        return self.temb.shape[0] - 1

    def labels(self, y, n: int) -> torch.Tensor:
        K = self.num_classes
        if y is None:
            return torch.full((n,), NULL, dtype=torch.long)
        if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
            raise CheckFailure(f"the model was called with y of type {type(y).__name__}: pass the labels, an integer "
                               "tensor (N,), or -1 (the null label) for the unconditional prediction")
        labels = torch.as_tensor(y).cpu()
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() > 1:
            raise CheckFailure(f"the model was called with y of dtype {str(labels.dtype).replace('torch.', '')} and "
                               f"shape {list(labels.shape)}: labels are integers, one per row")
        labels = labels.expand(n) if labels.dim() == 0 else labels
        if labels.shape[0] != n:
            raise CheckFailure(f"the model was called with {labels.shape[0]} labels for {n} rows of x_t")
        if bool((labels >= K).any()):
            if bool((labels[labels >= K] == K).all()):
                raise CheckFailure(f"the model was called with the label {K}, but its classes are 0..{K - 1}: the "
                                   "null label (no class) is -1 (coursepkg.diffusion.guidance.NULL), not the number "
                                   "of classes")
            raise CheckFailure(f"the model was called with the label {int(labels.max())}, but its classes are "
                               f"0..{K - 1}: call it as model(xt, t, y), the labels third (-1 for the null label)")
        if bool((labels < NULL).any()):
            raise CheckFailure(f"the model was called with the label {int(labels.min())}: classes are 0..{K - 1} "
                               "and the null label is -1")
        return labels.long()

    def steps(self, xt, t) -> torch.Tensor:
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise CheckFailure(f"the model was called with t of type {type(t).__name__}: pass t as given")
        steps = torch.as_tensor(t).cpu()
        if steps.is_floating_point() or steps.dtype == torch.bool or steps.dim() > 1:
            raise CheckFailure("the model was called with t of dtype "
                               f"{str(steps.dtype).replace('torch.', '')}: pass the integer steps t as given")
        steps = steps.expand(xt.shape[0]) if steps.dim() == 0 else steps
        if steps.shape[0] != xt.shape[0] or (steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > self.T)):
            raise CheckFailure(f"the model was called with steps that are not t as given (one per row, in 1..{self.T})"
                               ": call it as model(xt, t, y)")
        return steps.long()

    def output(self, xt, t, y, params) -> torch.Tensor:
        th = torch.tanh(xt)
        return params["a"] * xt + params["b"] * th * _row(params["temb"][t], xt) + params["cemb"][y + 1] * (1 + th / 2)

    def forward(self, xt, t, y=None):
        if not isinstance(xt, torch.Tensor) or not xt.is_floating_point() or xt.shape[1:] != self.a.shape:
            got = list(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
            raise CheckFailure(f"the model was called with x_t of shape {got}: call it as model(xt, t, y) with xt as "
                               f"given, (N, {', '.join(map(str, self.a.shape))})")
        steps, labels = self.steps(xt, t).to(xt.device), self.labels(y, xt.shape[0]).to(xt.device)
        return self.output(xt, steps, labels, {k: p.to(xt) for k, p in self.named_parameters()})

    def reference(self, xt, t, y) -> torch.Tensor:
        """The output in float64 on the CPU, from float64 copies of the parameters."""
        return self.output(_64(xt), t.cpu(), y.cpu(), {k: _64(p) for k, p in self.named_parameters()})


def _cfg_prediction(model, xt, t, y, scale):
    """A correct answer (the registered solution): the model called with the labels and with the null label."""
    eps_c = model(xt, t, y)
    eps_u = model(xt, t, torch.full_like(y, NULL))
    return eps_u + scale * (eps_c - eps_u)


DROPOUT_AT_SAMPLING = ("labels dropped at sampling time", "label dropout is for training only: at sampling time "
                       "the conditional prediction uses every row's label, model(xt, t, y), and the unconditional one "
                       "the null label for every row, model(xt, t, torch.full_like(y, -1))")
NULL_AS_ZERO = ("the null label given as 0 (a class) instead of -1", "0 is the first class; the unconditional "
                "prediction is model(xt, t, torch.full_like(y, -1)), -1 being coursepkg.diffusion.guidance.NULL")
PRED_HINT = ("eps_c = model(xt, t, y), eps_u = model(xt, t, torch.full_like(y, -1)); return eps_u + scale * (eps_c - "
             "eps_u)")


def _dropped_at_sampling(rec: Recorder, y: torch.Tensor) -> bool:
    """Whether a call of the model had, on the batch's N rows, some labels nulled and the others y's."""
    for c in rec.calls:
        labels = c.args[2] if len(c.args) > 2 else c.kwargs.get("y")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != y.shape[0]:
            continue
        null, kept = labels == NULL, labels != NULL
        if bool(null.any()) and bool(kept.any()) and torch.equal(labels[kept], y.cpu()[kept]):
            return True
    return False


@register("10.cfg_prediction", "the classifier-free guided prediction of a conditional model",
          solution=_cfg_prediction)
def check_cfg_prediction(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(PRED_SEED) for spec in PRED_SPECS]
    for i, (case, (shape, K, T, scale)) in enumerate(trials):
        torch.manual_seed(PRED_SEED + i)
        model = _CondDenoiser.random(case, shape[1:], K, T)
        rec = Recorder.on_module(model)
        xt = case.randn(*shape)
        t = _steps(case, shape[0], T)
        y = torch.randint(0, K, (shape[0],), generator=case.gen).to(case.device)
        inputs = describe_inputs(xt=xt, scale=scale)
        with torch.no_grad():
            got = call(f, model, xt, t, y, scale)
        require_like(got, xt.shape, dtype=case.dtype, device=case.device, what="the guided noise", inputs=inputs)
        with torch.no_grad():
            c, u = model.reference(xt, t, y), model.reference(xt, t, torch.full_like(y, NULL))
            u0 = model.reference(xt, t, torch.zeros_like(y))
        expected = (u + scale * (c - u)).to(**case.like)
        rtol, atol = case.tol
        mistakes = [(NULL_AS_ZERO[0], NULL_AS_ZERO[1], (u0 + scale * (c - u0)).to(**case.like))]
        mistakes += [(s.name, s.hint, s.value(c, u, scale).to(**case.like)) for s in _combination_slips()]
        if _dropped_at_sampling(rec, y) and not bool(torch.isclose(got.detach(), expected, rtol, atol).all()):
            raise Mistake(*DROPOUT_AT_SAMPLING)
        compare(got, expected, what="the guided noise", inputs=inputs, rtol=rtol, atol=atol,
                mistakes=distinct(mistakes, expected, rtol, atol))
    return (f"matches the reference on {len(trials)} random conditional models and inputs (scales 0 and 1 included: "
            "the unconditional and the conditional prediction)")


# --------------------------------------------------------------------------------------------------
# 10.label_dropout: the labels of a training batch with label dropout
# --------------------------------------------------------------------------------------------------
# (N, K, p_uncond, dtype of y): p = 1/2 first (where a single coin for the batch shows at once), int32 kept,
# p = 0 and p = 1 exactly
DROP_SPECS = [(3000, 3, 0.5, torch.int64), (4000, 10, 0.1, torch.int64), (2000, 5, 0.8, torch.int32),
              (1000, 4, 0.0, torch.int64), (500, 3, 1.0, torch.int64), (2500, 6, 0.3, torch.int64)]
DROP_SEED = 10600
MAX_LAG = 12

DROP_HINT = ("drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond; return torch.where(drop, "
             "-1, y), or y.masked_fill(drop, -1): a new tensor, y untouched")
ONE_MINUS_P = ("labels dropped with probability 1 - p_uncond", f"p_uncond is the probability of *dropping* a label: "
               f"torch.rand(...) < p_uncond is True with probability p_uncond; {DROP_HINT}")
ONE_COIN = ("one coin for the whole batch (every label dropped, or none)", f"each row gets its own coin: draw one "
            f"uniform number per label, torch.rand(y.shape, ...); {DROP_HINT}")
NEVER = ("no label ever dropped", f"with probability p_uncond each label becomes -1: {DROP_HINT}")
PATTERN = ("the dropped rows follow a pattern along the batch", f"every row's coin is independent of its neighbours' "
           f"(no every-k-th row, no block of rows): {DROP_HINT}")
BY_CLASS = ("whether a label is dropped depends on its class", f"one coin per row, the same probability p_uncond "
            f"whatever the label (not one coin per class): {DROP_HINT}")
NULL_ZERO = ("dropped labels set to 0 instead of -1", "0 is the first class; the null label, \"no class\", is -1 "
             "(coursepkg.diffusion.guidance.NULL), which the network's embedding maps to its extra row")
NULL_K = ("dropped labels set to the number of classes instead of -1", "the null label of this course is -1 "
          "(coursepkg.diffusion.guidance.NULL) whatever the number of classes; the network maps it to its extra "
          "embedding row itself")
SAME_CALLS = ("the same labels dropped at every call", "draw the coins from `generator` itself, so that it moves on "
              "at every call (no copy of its state, no reseeding it inside the function)")
NOT_FROM_GENERATOR = ("the coins not drawn from `generator`", "the same generator seed must give the same batch: pass "
                      "generator=generator to torch.rand (or torch.bernoulli)")
SAME_ANY_GENERATOR = ("the same labels dropped whatever the generator", "draw the coins from the `generator` you are "
                      "given (no fixed mask, no seed or generator of your own inside the function)")
ALWAYS = ("every label dropped", f"each label is dropped with probability p_uncond, kept otherwise: {DROP_HINT}")
FIXED_COUNT = ("the same number of labels dropped at every call", "each row's coin is independent of the others', so "
               "the number dropped varies from batch to batch (it is binomial, not round(p_uncond * N)): draw one coin "
               f"per row; {DROP_HINT}")


def _judge_structure(got, y: torch.Tensor, inputs: str) -> torch.Tensor:
    require_tensor(got, "the labels")
    N = y.shape[0]
    if tuple(got.shape) != (N,):
        hint = " (a mask or labels of another shape?)" if got.numel() != N else ": keep y's shape (N,)"
        raise CheckFailure(f"the labels have shape {list(got.shape)}, expected {[N]} (for inputs {inputs}){hint}")
    if got.device != y.device:
        raise CheckFailure(f"the labels are on device {got.device}, but y is on {y.device}: draw the coins with "
                           "device=y.device (and the generator's device)")
    if got.dtype == torch.bool:
        raise CheckFailure("the labels are booleans: return the labels themselves, with -1 where one is dropped "
                           "(torch.where(drop, -1, y)), not the mask")
    if got.dtype != y.dtype:
        raise CheckFailure(f"the labels have dtype {str(got.dtype).replace('torch.', '')}, but y has "
                           f"{str(y.dtype).replace('torch.', '')} (for inputs {inputs}): keep y's dtype, e.g. "
                           "torch.where(drop, -1, y) or y.masked_fill(drop, -1)")
    return got.detach()


def _judge_values(got: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """The mask of dropped rows, after checking that every changed label is -1."""
    changed = got != y
    wrong = changed & (got != NULL)
    if bool(wrong.any()):
        bad = got[wrong]
        if bool((bad == 0).all()):
            raise Mistake(*NULL_ZERO)
        if bool((bad == bad[0]).all()) and int(bad[0]) >= K:
            raise Mistake(*NULL_K)
        raise CheckFailure(f"{int(wrong.sum())} labels were changed to other values than -1 (e.g. {int(y[wrong][0])} "
                           f"became {int(bad[0])}): a dropped label becomes -1, a kept one stays as it was")
    return changed


def _rate_failure(k: int, N: int, p: float, masks) -> CheckFailure | None:
    """None when ``k`` dropped labels of ``N`` is compatible with Binomial(N, p); else what explains it."""
    if p == 0.0:
        if k == 0:
            return None
        return Mistake(*ONE_MINUS_P) if k == N else CheckFailure(f"with p_uncond = 0 no label may be dropped, yet {k} "
                                                                 f"of {N} were: {DROP_HINT}")
    if p == 1.0:
        if k == N:
            return None
        return Mistake(*ONE_MINUS_P) if k == 0 else CheckFailure(f"with p_uncond = 1 every label is dropped, yet "
                                                                 f"{N - k} of {N} were kept: {DROP_HINT}")
    sd = math.sqrt(N * p * (1 - p))
    if abs(k - N * p) <= N_SIGMA * sd:
        return None
    if abs(k - N * (1 - p)) <= N_SIGMA * sd:
        return Mistake(*ONE_MINUS_P)
    if k in (0, N):
        counts = {int(m.sum()) for m in masks()}
        if counts == {0}:
            return Mistake(*NEVER)
        if counts == {N}:
            return Mistake(*ALWAYS)
        if counts <= {0, N}:
            return Mistake(*ONE_COIN)
    return CheckFailure(f"{k} of {N} labels were dropped where about {N * p:.0f} (give or take {sd:.0f}) are expected "
                        f"with p_uncond = {p:g}: {_sigmas((k - N * p) / sd)}; {DROP_HINT}")


def _sigmas(z: float) -> str:
    return f"{abs(z):.1f} standard errors {'more' if z > 0 else 'fewer'}"


def _judge_independence(mask: torch.Tensor, y: torch.Tensor, K: int) -> None:
    """No pattern along the rows (the correlation of the drop indicators at lags 1..MAX_LAG) and none across the
    classes (a chi-square test of the per-class rates), both about the batch's own rate (so that a wrong rate is
    told apart from a pattern); ``mask`` has both values."""
    d = mask.to(F64).cpu()
    N = d.numel()
    p = d.mean().item()
    c = (d - p) / math.sqrt(p * (1 - p))
    limit = max(N_SIGMA, math.sqrt(2 * math.log(MAX_LAG)) + 3.0)
    for lag in range(1, MAX_LAG + 1):
        r = (c[:-lag] * c[lag:]).mean().item()
        if abs(r) * math.sqrt(N - lag) > limit:
            raise Mistake(*PATTERN)
    labels = y.cpu().long()
    n = torch.bincount(labels, minlength=K).to(F64)
    k = torch.bincount(labels, weights=d, minlength=K)
    used = n > 0
    chi2 = float(((k - n * p) ** 2 / (n * p * (1 - p)))[used].sum())
    df = max(int(used.sum()) - 1, 1)
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))     # Wilson-Hilferty
    if z > N_SIGMA:
        raise Mistake(*BY_CLASS)


def _drop_labels(y, p_uncond, generator):
    """:func:`coursepkg.diffusion.guidance.drop_labels` behind the exercise's signature."""
    return guidance.drop_labels(y, p_uncond, generator=generator)


@register("10.label_dropout", "label dropout: each label replaced by the null label -1 with probability p_uncond",
          solution=_drop_labels)
def check_label_dropout(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(DROP_SEED, dtypes=(F64,)) for spec in DROP_SPECS]
    for i, (case, (N, K, p, dtype)) in enumerate(trials):
        torch.manual_seed(DROP_SEED + i)                  # an answer that draws from torch's generator: one verdict
        y = _labels(case.gen, N, K).to(dtype=dtype, device=case.device)
        seed = DROP_SEED + 10 * i
        inputs = describe_inputs(y=y, p_uncond=p)

        def run(s, gen=None):
            gen = torch.Generator(device=case.device).manual_seed(s) if gen is None else gen
            out = _judge_structure(call(f, y, p, gen), y, inputs)
            return _judge_values(out, y, K), gen

        mask, gen = run(seed)
        k = int(mask.sum())

        def masks():
            return [run(seed + 1000 + j)[0] for j in range(8)]

        if 0 < k < N:
            _judge_independence(mask, y, K)
        failure = _rate_failure(k, N, p, masks)
        if failure is not None:
            raise failure
        if i == 0:
            others = masks()
            if len({k} | {int(m.sum()) for m in others}) == 1 and not all(torch.equal(m, mask) for m in others):
                raise Mistake(*FIXED_COUNT)
            same, _ = run(seed)
            if not torch.equal(same, mask):
                raise Mistake(*NOT_FROM_GENERATOR)
            other, _ = run(seed + 1)
            if torch.equal(other, mask):
                raise Mistake(*SAME_ANY_GENERATOR)
            again, _ = run(seed, gen)                     # the first call's generator, drawn from once already
            if torch.equal(again, mask):
                raise Mistake(*SAME_CALLS)
    return (f"drops labels at the rate p_uncond on {len(trials)} random batches (p_uncond = 0 and 1 exactly, the "
            f"others within {N_SIGMA:g} standard errors), one independent coin per row (no pattern along the batch or "
            "across the classes), sets the dropped ones to -1 and keeps the others, y and its dtype; the coins come "
            "from the generator (the same seed gives the same labels, another seed others) and are fresh at every "
            "call")
