"""Chapter 10 checks (conditioning and guidance): the solutions pass; a blank exercise fails; every catalogued
mistake, written here as the wrong code a student would write, fails with its name; wrong answers the catalogue
does not name fail all the same; correct answers written unlike the reference pass; hostile answers fail; and the
checks' references agree with :mod:`coursepkg.diffusion.guidance` and :mod:`coursepkg.diffusion.exact`."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg.diffusion import exact, guidance
from coursepkg.grading import check, get_check
from coursepkg.grading.checks import ch10_guidance as C
from coursepkg.grading.kit import Case

from .helpers import check_fails, check_passes, first_tensor, zeros_like_first

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py
F64 = torch.float64
IDS = ["10.class_score", "10.classifier_grad", "10.guided_eps", "10.label_dropout", "10.cfg", "10.cfg_prediction"]
FUNCTION_CHECKS = ["10.class_score", "10.guided_eps", "10.cfg"]


def rows(x):
    return (-1,) + (1,) * (x.dim() - 1)


# ---------------------------------------------------------------------------------------------- the solutions
# as in solutions/10_guidance.ipynb
def class_score(xt, t, y, weights, means, variances, labels, alpha_bar):
    ab = alpha_bar[t]
    m = ab.sqrt() * means                                    # (K, D)
    v = ab * variances + 1 - ab                              # (K,)
    diff = xt[:, None, :] - m[None]                          # (N, K, D)
    log_joint = weights.log() - 0.5 * xt.shape[1] * v.log() - 0.5 * (diff**2).sum(-1) / v
    pulls = -diff / v[:, None]                               # (N, K, D)
    in_y = labels == y
    r_all = torch.softmax(log_joint, dim=1)
    r_y = torch.softmax(log_joint[:, in_y], dim=1)
    return (r_y[..., None] * pulls[:, in_y]).sum(1) - (r_all[..., None] * pulls).sum(1)


def classifier_grad(classifier, xt, t, y):
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, t), dim=1)
        log_py = log_p[torch.arange(x.shape[0]), y].sum()
        (grad,) = torch.autograd.grad(log_py, x)
    return grad


def guided_eps(eps, grad_log_py, t, alpha_bar, gamma):
    ab = alpha_bar[t].view(rows(eps))
    return eps - gamma * (1 - ab).sqrt() * grad_log_py


def drop_labels(y, p_uncond, generator):
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, -1), y)


def cfg_eps(eps_cond, eps_uncond, scale):
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_prediction(model, xt, t, y, scale):
    eps_c = model(xt, t, y)
    eps_u = model(xt, t, torch.full_like(y, -1))
    return eps_u + scale * (eps_c - eps_u)


SOLUTIONS = dict(zip(IDS, [class_score, classifier_grad, guided_eps, drop_labels, cfg_eps, cfg_prediction],
                     strict=True))


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_solutions_pass(exercise_id):
    check_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_blank_exercise_fails(exercise_id):
    def blank(*args, **kwargs):
        raise NotImplementedError()
    check_fails(exercise_id, blank, "not implemented")


# ---------------------------------------------------------------------------------------------- the references
def _case(seed=3):
    return Case(torch.Generator().manual_seed(seed), F64, torch.device("cpu"))


def test_the_class_score_is_the_gradient_of_the_class_log_posterior():
    """The reference (exact.class_score) is the autograd gradient of exact.class_log_posterior, which is Bayes'
    rule on the noised mixture; the solution agrees with both."""
    case = _case()
    for spec in C.SCORE_SPECS:
        a = C._score_inputs(case, spec)
        data = C._mixture(a["weights"], a["means"], a["variances"])
        sched = C._from_alpha_bar(a["alpha_bar"])
        x = a["xt"].clone().requires_grad_(True)
        log_post = exact.class_log_posterior(data, a["labels"], x, a["t"], sched)[:, a["y"]]
        (g,) = torch.autograd.grad(log_post.sum(), x)
        ref = C._class_score(*a.values())
        assert torch.allclose(ref, g, atol=1e-9), spec
        assert torch.allclose(class_score(*a.values()), ref, atol=1e-9), spec
        # and Bayes' rule by hand: log q(x_t | y) p(y) - log q(x_t), with the noised components
        ab = float(a["alpha_bar"][a["t"]])
        noised = exact.marginal(data, a["t"], sched)
        assert torch.allclose(noised.means, ab**0.5 * a["means"]) and torch.allclose(
            noised.covariances[:, 0, 0], ab * a["variances"] + 1 - ab)


def test_the_classifier_reference_is_the_packages_classifier_guidance():
    """The reference gradient is ClassifierGuidance.grad_log_prob on the check's classifier, with the parameters
    left without .grad."""
    case = _case()
    clf = C._Classifier.random(case, (3,), 4, 9)
    xt, t = case.randn(11, 3), C._steps(case, 11, 9)
    y = torch.randint(0, 4, (11,), generator=case.gen)
    sched = D.Schedule.named("linear", T=9)
    cg = guidance.classifier_guidance(lambda x, s: torch.zeros_like(x), clf, y, 1.0, sched)
    expected = cg.grad_log_prob(xt, t)
    assert torch.allclose(C._grad_of(clf, xt, t, y, C._log_py), expected, atol=1e-10)
    assert torch.allclose(classifier_grad(clf, xt, t, y), expected, atol=1e-10)
    assert all(p.grad is None for p in clf.parameters())
    with torch.no_grad():                                     # the registered solution works where samplers run
        assert torch.allclose(C._classifier_grad(clf, xt, t, y), expected, atol=1e-10)


def test_guided_eps_and_cfg_are_the_packages():
    case = _case()
    betas, alpha_bar = C._schedule(case, 12)
    sched = D.Schedule(betas)
    eps, grad = case.randn(9, 3), case.randn(9, 3)
    t = C._steps(case, 9, 12)
    expected = guidance.guided_eps(eps, grad, t, 2.5, sched)
    assert torch.allclose(C._guided_eps(eps, grad, t, alpha_bar, 2.5), expected, atol=1e-12)
    assert torch.allclose(guided_eps(eps, grad, t, alpha_bar, 2.5), expected, atol=1e-12)
    # the guided noise is the noise of the guided score: eps = -sqrt(1 - alpha_bar_t) * score
    score = D.score_from_eps(torch.zeros_like(eps), t, eps, sched) + 2.5 * grad
    assert torch.allclose(D.eps_from_score(torch.zeros_like(eps), t, score, sched), expected, atol=1e-12)
    c, u = case.randn(9, 3), case.randn(9, 3)
    for s in (0.0, 1.0, 3.0):
        assert torch.allclose(C._cfg_eps(c, u, s), guidance.cfg_combine(c, u, s))
        assert torch.allclose(cfg_eps(c, u, s), guidance.cfg_combine(c, u, s))
    assert torch.allclose(cfg_eps(c, u, 0.0), u) and torch.allclose(cfg_eps(c, u, 1.0), c)


def test_the_guided_prediction_is_the_packages_classifier_free_guidance():
    case = _case()
    model = C._CondDenoiser.random(case, (3,), 4, 9)
    xt, t = case.randn(7, 3), C._steps(case, 7, 9)
    y = torch.randint(0, 4, (7,), generator=case.gen)
    for s in (0.0, 1.0, 2.5):
        expected = guidance.classifier_free_guidance(model, y, s)(xt, t)
        assert torch.allclose(C._cfg_prediction(model, xt, t, y, s), expected, atol=1e-12)
        assert torch.allclose(cfg_prediction(model, xt, t, y, s), expected, atol=1e-12)
    null = torch.full_like(y, -1)
    assert torch.allclose(model.reference(xt, t, y), model(xt, t, y), atol=1e-12)
    assert torch.allclose(cfg_prediction(model, xt, t, y, 0.0), model(xt, t, null), atol=1e-12)
    assert torch.allclose(model(xt, t, None), model(xt, t, null))


def test_the_exact_cfg_is_classifier_guidance_with_the_exact_classifier():
    """With exact scores, eps_c - eps_u = -sqrt(1 - alpha_bar_t) grad log p(y | x_t): the two guidances coincide,
    and the class score is what the noised classifier's gradient is (what the notebook's demonstration shows)."""
    data = G.GMM(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]],
                                                                       dtype=F64),
                 torch.stack([0.2 * torch.eye(2, dtype=F64), 0.5 * torch.eye(2, dtype=F64),
                              0.3 * torch.eye(2, dtype=F64)]))
    labels = torch.tensor([0, 1, 1])
    sched = D.Schedule.named("linear", T=50, beta_end=0.1)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = 17
    eps_u = exact.OptimalDenoiser(data, sched)(x, t)
    eps_c = exact.OptimalDenoiser(exact.class_conditional(data, labels, 1), sched)(x, t)
    grad = classifier_grad(exact.ExactClassifier(data, labels, sched), x, torch.full((40,), t), torch.ones(40).long())
    ab = sched.alpha_bar
    assert torch.allclose(guided_eps(eps_u, grad, torch.full((40,), t), ab, 3.0), cfg_eps(eps_c, eps_u, 3.0))
    w, m = data.weights, data.means
    v = data.covariances[:, 0, 0]
    assert torch.allclose(class_score(x, t, 1, w, m, v, labels, ab), grad)


def test_the_packages_label_dropout_passes_the_statistics():
    """The package's drop_labels is the registered solution: it passes, and so does a batch of many of its draws
    in the independence test (no false alarm in 30 seeds)."""
    y = C._labels(torch.Generator().manual_seed(0), 2000, 5)
    for seed in range(30):
        out = guidance.drop_labels(y, 0.3, generator=torch.Generator().manual_seed(seed))
        mask = C._judge_values(out, y, 5)
        assert C._rate_failure(int(mask.sum()), 2000, 0.3, lambda: []) is None
        C._judge_independence(mask, y, 5)


# ---------------------------------------------------------------------------------------------- catalogued mistakes
def _score_with(mean=lambda m, ab: ab.sqrt() * m, var=lambda v, ab: ab * v + 1 - ab, step=lambda t: t,
                weights=lambda w: w, normalise=True, combine=lambda cond, marg: cond - marg):
    def answer(xt, t, y, w, means, variances, labels, alpha_bar):
        ab = alpha_bar[step(t)]
        m, v, w = mean(means, ab), var(variances, ab), weights(w)
        diff = xt[:, None, :] - m[None]
        log_joint = w.log() - 0.5 * xt.shape[1] * v.log() - 0.5 * (diff**2).sum(-1) / v
        pulls = -diff / v[:, None]
        in_y = labels == y
        r_all = torch.softmax(log_joint, 1)
        r_y = torch.softmax(log_joint[:, in_y], 1) if normalise else r_all[:, in_y]
        return combine((r_y[..., None] * pulls[:, in_y]).sum(1), (r_all[..., None] * pulls).sum(1))
    return answer


def _clf_with(objective=lambda lp, y: lp[torch.arange(lp.shape[0]), y].sum(), log=lambda lg: lg.log_softmax(1)):
    def answer(classifier, xt, t, y):
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(objective(log(classifier(x, t)), y), x)
        return g
    return answer


def clf_params_tuple(classifier, xt, t, y):                 # the parameters' gradients
    log_py = classifier(xt, t).log_softmax(1)[torch.arange(xt.shape[0]), y].sum()
    return torch.autograd.grad(log_py, list(classifier.parameters()))


def clf_params_first(classifier, xt, t, y):
    return clf_params_tuple(classifier, xt, t, y)[0]


def clf_backward_on_the_model(classifier, xt, t, y):         # backward(): the parameters get .grad, xt none
    with torch.enable_grad():
        classifier(xt, t).log_softmax(1)[torch.arange(xt.shape[0]), y].sum().backward()
    return xt.grad


def clf_no_enable_grad(classifier, xt, t, y):                # fails where samplers call it, under no_grad
    x = xt.detach().requires_grad_(True)
    log_py = classifier(x, t).log_softmax(1)[torch.arange(x.shape[0]), y].sum()
    return torch.autograd.grad(log_py, x)[0]


def clf_right_but_backward(classifier, xt, t, y):
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        classifier(x, t).log_softmax(1)[torch.arange(x.shape[0]), y].sum().backward()
    return x.grad


def clf_create_graph(classifier, xt, t, y):                 # a graph kept: accepted (none under no_grad)
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        log_py = classifier(x, t).log_softmax(1)[torch.arange(x.shape[0]), y].sum()
        return torch.autograd.grad(log_py, x, create_graph=True)[0]


def clf_on_the_callers_xt(classifier, xt, t, y):
    with torch.enable_grad():
        xt.requires_grad_(True)
        log_py = classifier(xt, t).log_softmax(1)[torch.arange(xt.shape[0]), y].sum()
        return torch.autograd.grad(log_py, xt)[0]


def _guided_with(scale=lambda ab, t: (1 - ab[t]).sqrt(), sign=-1, on_eps=lambda g: 1, on_grad=lambda g: g,
                 reshape=True):
    def answer(eps, grad, t, alpha_bar, gamma):
        s = scale(alpha_bar, t)
        s = s.view(rows(eps)) if reshape else s
        return on_eps(gamma) * eps + sign * on_grad(gamma) * s * grad
    return answer


def _drop_with(coins=lambda y, p, g: torch.rand(y.shape, generator=g, device=y.device) < p, null=lambda y: -1):
    def answer(y, p_uncond, generator):
        return torch.where(coins(y, p_uncond, generator), torch.full_like(y, null(y)), y)
    return answer


def drop_in_place(y, p_uncond, generator):
    y[torch.rand(y.shape, generator=generator) < p_uncond] = -1
    return y


def drop_every_kth(y, p_uncond, generator):                  # a fixed pattern at the right rate
    if p_uncond in (0, 1):
        return torch.full_like(y, -1) if p_uncond == 1 else y.clone()
    k = round(1 / p_uncond)
    mask = torch.arange(len(y), device=y.device) % k == 0
    return torch.where(mask, torch.full_like(y, -1), y)


def drop_per_class(y, p_uncond, generator):                 # one coin per class, not per row
    coins = torch.rand(int(y.max()) + 1, generator=generator) < p_uncond
    return torch.where(coins[y.long()], torch.full_like(y, -1), y)


def drop_global_rng(y, p_uncond, generator):
    return torch.where(torch.rand(y.shape) < p_uncond, torch.full_like(y, -1), y)


def drop_own_seed(y, p_uncond, generator):
    return drop_labels(y, p_uncond, torch.Generator().manual_seed(0))


def drop_from_a_copy(y, p_uncond, generator):                # the caller's generator never moves on
    g = torch.Generator()
    g.set_state(generator.get_state())
    return drop_labels(y, p_uncond, g)


def drop_fixed_count(y, p_uncond, generator):                # exactly round(p N) rows, chosen at random
    k = round(p_uncond * len(y))
    idx = torch.randperm(len(y), generator=generator)[:k]
    out = y.clone()
    out[idx] = -1
    return out


def pred_null_zero(model, xt, t, y, scale):
    eps_c, eps_u = model(xt, t, y), model(xt, t, torch.zeros_like(y))
    return eps_u + scale * (eps_c - eps_u)


def pred_null_k(model, xt, t, y, scale):
    eps_c, eps_u = model(xt, t, y), model(xt, t, torch.full_like(y, model.num_classes))
    return eps_u + scale * (eps_c - eps_u)


def pred_dropout_at_sampling(model, xt, t, y, scale):
    eps_c = model(xt, t, guidance.drop_labels(y, 0.2))
    eps_u = model(xt, t, torch.full_like(y, -1))
    return eps_u + scale * (eps_c - eps_u)


def pred_ho_salimans(model, xt, t, y, scale):
    eps_c, eps_u = model(xt, t, y), model(xt, t, torch.full_like(y, -1))
    return (1 + scale) * eps_c - scale * eps_u


def pred_conditional_only(model, xt, t, y, scale):
    return model(xt, t, y)


def pred_from_the_conditional_side(model, xt, t, y, scale):
    eps_c, eps_u = model(xt, t, y), model(xt, t, torch.full_like(y, -1))
    return eps_c + scale * (eps_u - eps_c)


CATALOGUED = [
    ("10.class_score", _score_with(mean=lambda m, ab: m, var=lambda v, ab: v), "clean mixture"),
    ("10.class_score", _score_with(mean=lambda m, ab: m), "means not scaled by sqrt(alpha_bar_t)"),
    ("10.class_score", _score_with(var=lambda v, ab: v), "variances not noised"),
    ("10.class_score", _score_with(var=lambda v, ab: ab * v), "1 - alpha_bar_t missing"),
    ("10.class_score", _score_with(mean=lambda m, ab: ab * m), "scaled by alpha_bar_t instead of its square root"),
    ("10.class_score", _score_with(var=lambda v, ab: ab * v**2 + 1 - ab), "taken for standard deviations"),
    ("10.class_score", _score_with(step=lambda t: t - 1), "t off by one"),
    ("10.class_score", _score_with(combine=lambda cond, marg: cond), "the marginal's score not subtracted"),
    ("10.class_score", _score_with(combine=lambda cond, marg: marg), "the class not used"),
    ("10.class_score", _score_with(combine=lambda cond, marg: marg - cond), "the wrong way round"),
    ("10.class_score", _score_with(normalise=False), "not renormalised within the class"),
    ("10.class_score", _score_with(weights=lambda w: torch.full_like(w, 1 / len(w))), "weights ignored"),
    ("10.classifier_grad", _clf_with(log=lambda lg: lg), "without log_softmax"),
    ("10.classifier_grad", _clf_with(log=lambda lg: lg.softmax(1)), "the probability p(y | x_t)"),
    ("10.classifier_grad", _clf_with(log=lambda lg: lg.log_softmax(0)), "over the batch (dim 0)"),
    ("10.classifier_grad", _clf_with(objective=lambda lp, y: lp[:, y].sum()), "every row's label in every row"),
    ("10.classifier_grad", _clf_with(objective=lambda lp, y: lp[torch.arange(len(y)), y].mean()),
     "a mean over the batch"),
    ("10.classifier_grad", _clf_with(objective=lambda lp, y: -lp[torch.arange(len(y)), y].sum()),
     "the gradient of the cross-entropy -log p"),
    ("10.classifier_grad", _clf_with(objective=lambda lg, y: F.cross_entropy(lg, y), log=lambda lg: lg),
     "the gradient of F.cross_entropy"),
    ("10.classifier_grad", _clf_with(objective=lambda lp, y: lp.sum()), "every class summed"),
    ("10.classifier_grad", clf_params_tuple, "with respect to the classifier's parameters"),
    ("10.classifier_grad", clf_params_first, "with respect to the classifier's parameters"),
    ("10.classifier_grad", clf_backward_on_the_model, "with respect to the classifier's parameters"),
    ("10.classifier_grad", clf_no_enable_grad, "no graph from x_t"),
    ("10.classifier_grad", clf_right_but_backward, ".backward() filled the classifier's parameters' .grad"),
    ("10.classifier_grad", clf_on_the_callers_xt, "requires_grad switched on for the caller's x_t"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: torch.ones_like(ab[t])), "not scaled by sqrt(1 - alpha_bar_t)"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: ab[t].sqrt()), "sqrt(alpha_bar_t) where"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: 1 - ab[t]), "without its square root"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: (1 - ab[t]).rsqrt()), "divided by sqrt(1 - alpha_bar_t)"),
    ("10.guided_eps", _guided_with(sign=1), "wrong sign"),
    ("10.guided_eps", _guided_with(on_eps=lambda g: g), "gamma applied to eps too"),
    ("10.guided_eps", _guided_with(on_eps=lambda g: g, on_grad=lambda g: 1), "gamma on eps instead of"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: (1 - ab[t - 1]).sqrt()), "t off by one"),
    ("10.guided_eps", _guided_with(scale=lambda ab, t: (1 - ab[t] / ab[t - 1]).sqrt()), "sqrt(beta_t)"),
    ("10.guided_eps", _guided_with(reshape=False), "not reshaped"),
    ("10.label_dropout", _drop_with(coins=lambda y, p, g: torch.rand(y.shape, generator=g) > p), "1 - p_uncond"),
    ("10.label_dropout", _drop_with(coins=lambda y, p, g: (torch.rand((), generator=g) < p).expand(y.shape)),
     "one coin for the whole batch"),
    ("10.label_dropout", _drop_with(null=lambda y: 0), "set to 0 instead of -1"),
    ("10.label_dropout", _drop_with(null=lambda y: int(y.max()) + 1), "set to the number of classes"),
    ("10.label_dropout", _drop_with(coins=lambda y, p, g: torch.zeros(y.shape, dtype=torch.bool)),
     "no label ever dropped"),
    ("10.label_dropout", _drop_with(coins=lambda y, p, g: torch.ones(y.shape, dtype=torch.bool)),
     "every label dropped"),
    ("10.label_dropout", drop_every_kth, "follow a pattern along the batch"),
    ("10.label_dropout", drop_per_class, "depends on its class"),
    ("10.label_dropout", drop_global_rng, "not drawn from `generator`"),
    ("10.label_dropout", drop_own_seed, "whatever the generator"),
    ("10.label_dropout", drop_from_a_copy, "the same labels dropped at every call"),
    ("10.label_dropout", drop_fixed_count, "the same number of labels dropped at every call"),
    ("10.cfg", lambda c, u, s: c + s * (u - c), "from the conditional side"),
    ("10.cfg", lambda c, u, s: (1 + s) * c - s * u, "Ho and Salimans"),
    ("10.cfg", lambda c, u, s: s * c + u, "the unconditional prediction added"),
    ("10.cfg", lambda c, u, s: s * (c - u), "the difference alone"),
    ("10.cfg", lambda c, u, s: u + (s - 1) * (c - u), "scale - 1 where scale belongs"),
    ("10.cfg", lambda c, u, s: c.clone(), "the conditional prediction returned"),
    ("10.cfg", lambda c, u, s: u.clone(), "the unconditional prediction returned"),
    ("10.cfg_prediction", pred_null_zero, "null label given as 0"),
    ("10.cfg_prediction", pred_null_k, "not the number of classes"),
    ("10.cfg_prediction", pred_dropout_at_sampling, "labels dropped at sampling time"),
    ("10.cfg_prediction", pred_ho_salimans, "Ho and Salimans"),
    ("10.cfg_prediction", pred_conditional_only, "the conditional prediction returned"),
    ("10.cfg_prediction", pred_from_the_conditional_side, "from the conditional side"),
]


@pytest.mark.parametrize("exercise_id, fn, words", CATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(CATALOGUED)])
def test_catalogued_mistakes_fail_with_their_hint(exercise_id, fn, words):
    r = check_fails(exercise_id, fn, words)
    assert "could not evaluate" not in r.message, r.message


def test_every_catalogued_slip_is_written_as_a_student_mistake():
    """Each slip of the function checks' catalogues, and each named mistake of the custom checks, is named by at
    least one student-written mistake above."""
    for exercise_id in FUNCTION_CHECKS:
        names = {s.name for s in get_check(exercise_id).func.mistakes}
        covered = {n for n in names if any(w in n for i, _, w in CATALOGUED if i == exercise_id)}
        assert covered == names, f"{exercise_id}: no student-written mistake for {names - covered}"
    named = {
        "10.classifier_grad": [n for n, _, _ in C._clf_mistakes(*_clf_problem())]
        + [C.PARAMS[0], C.NO_GRAD_MODE[0], C.BACKWARD[0], C.INPUT_GRAD[0]],
        "10.label_dropout": [m[0] for m in (C.ONE_MINUS_P, C.ONE_COIN, C.NEVER, C.ALWAYS, C.PATTERN, C.BY_CLASS,
                                            C.NULL_ZERO, C.NULL_K, C.SAME_CALLS, C.NOT_FROM_GENERATOR,
                                            C.SAME_ANY_GENERATOR, C.FIXED_COUNT)],
        "10.cfg_prediction": [C.NULL_AS_ZERO[0], C.DROPOUT_AT_SAMPLING[0]],
    }
    for exercise_id, names in named.items():
        missing = {n for n in names if not any(w in n for i, _, w in CATALOGUED if i == exercise_id)}
        assert not missing, f"{exercise_id}: no student-written mistake for {missing}"


def _clf_problem():
    case = _case()
    return C._Classifier.random(case, (2,), 3, 5), case.randn(4, 2), C._steps(case, 4, 5), torch.tensor([0, 1, 2, 0])


# ---------------------------------------------------------------------------------------------- uncatalogued wrong
def score_no_normaliser(xt, t, y, w, means, variances, labels, alpha_bar):    # -D/2 log v_k forgotten
    ab = alpha_bar[t]
    m, v = ab.sqrt() * means, ab * variances + 1 - ab
    diff = xt[:, None, :] - m[None]
    log_joint = w.log() - 0.5 * (diff**2).sum(-1) / v
    pulls, in_y = -diff / v[:, None], labels == y
    return ((log_joint[:, in_y].softmax(1)[..., None] * pulls[:, in_y]).sum(1)
            - (log_joint.softmax(1)[..., None] * pulls).sum(1))


def score_noise_variance_squared(xt, t, y, w, means, variances, labels, alpha_bar):
    return _score_with(var=lambda v, ab: ab * v + (1 - ab) ** 2)(xt, t, y, w, means, variances, labels, alpha_bar)


def score_of_the_probability(xt, t, y, w, means, variances, labels, alpha_bar):   # grad p(y | x) = p grad log p
    x = xt.detach().requires_grad_(True)
    data = G.GMM(w, means, variances[:, None, None] * torch.eye(xt.shape[1], dtype=xt.dtype))
    sched = D.Schedule(torch.cat([alpha_bar.new_zeros(1), 1 - alpha_bar[1:] / alpha_bar[:-1]]).double())
    with torch.enable_grad():
        p = exact.class_log_posterior(data, labels, x, t, sched)[:, y].exp()
        return torch.autograd.grad(p.sum(), x)[0]


def score_mixed_noising(xt, t, y, w, means, variances, labels, alpha_bar):   # the class noised, the marginal not
    args = (xt, t, y, w, means, variances, labels, alpha_bar)
    cond = _score_with(combine=lambda cond, marg: cond)(*args)
    marginal = _score_with(mean=lambda m, ab: m, var=lambda v, ab: v, combine=lambda cond, marg: marg)(*args)
    return cond - marginal


def clf_t_zero(classifier, xt, t, y):                        # the clean classifier: t = 0 for every row
    return classifier_grad(classifier, xt, torch.zeros_like(t), y)


def clf_finite_differences(classifier, xt, t, y, h=1e-2):
    flat = xt.reshape(xt.shape[0], -1)
    out = torch.zeros_like(flat)

    def log_py(z):
        return classifier(z.reshape(xt.shape), t).log_softmax(1)[torch.arange(len(y)), y]

    with torch.no_grad():
        for j in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[:, j] = h
            out[:, j] = (log_py(flat + e) - log_py(flat - e)) / (2 * h)
    return out.reshape(xt.shape)


def clf_next_label(classifier, xt, t, y):
    return classifier_grad(classifier, xt, t, (y + 1) % classifier.num_classes)


def clf_float32(classifier, xt, t, y):
    return classifier_grad(classifier, xt, t, y).float()


def guided_gamma_squared(eps, grad, t, alpha_bar, gamma):
    return guided_eps(eps, gamma * grad, t, alpha_bar, gamma)


def guided_last_step(eps, grad, t, alpha_bar, gamma):       # alpha_bar_T for every row
    return eps - gamma * (1 - alpha_bar[-1]).sqrt() * grad


def guided_fourth_root(eps, grad, t, alpha_bar, gamma):
    return eps - gamma * (1 - alpha_bar[t].view(rows(eps))) ** 0.25 * grad


def guided_score_returned(eps, grad, t, alpha_bar, gamma):  # the guided score instead of the guided noise
    s = (1 - alpha_bar[t].view(rows(eps))).sqrt()
    return -eps / s + gamma * grad


def drop_one_in_k(y, p_uncond, generator):                  # randint(0, round(1/p)) == 0: not rate p
    if p_uncond in (0, 1):
        return torch.full_like(y, -1) if p_uncond == 1 else y.clone()
    k = max(2, int(1 / p_uncond))
    return torch.where(torch.randint(0, k, y.shape, generator=generator) == 0, torch.full_like(y, -1), y)


def drop_first_half_only(y, p_uncond, generator):
    coins = torch.rand(y.shape, generator=generator) < min(1.0, 2 * p_uncond)
    coins[len(y) // 2:] = p_uncond == 1
    return torch.where(coins, torch.full_like(y, -1), y)


def drop_float_labels(y, p_uncond, generator):
    return torch.where(torch.rand(y.shape, generator=generator) < p_uncond, -1.0, y.double())


def drop_mask_returned(y, p_uncond, generator):
    return torch.rand(y.shape, generator=generator) < p_uncond


def drop_kept_shifted(y, p_uncond, generator):              # kept labels changed too (one-hot thinking: y + 1)
    return torch.where(torch.rand(y.shape, generator=generator) < p_uncond, torch.full_like(y, -1), y + 1)


def cfg_half_difference(c, u, s):
    return u + s * (c - u) / 2


def cfg_sum(c, u, s):
    return u + s * (c + u)


def cfg_squared_scale(c, u, s):
    return u + s**2 * (c - u)


def pred_swapped_arguments(model, xt, t, y, scale):
    eps_c, eps_u = model(xt, y, t), model(xt, torch.full_like(y, -1), t)
    return eps_u + scale * (eps_c - eps_u)


def pred_t_minus_one(model, xt, t, y, scale):
    return cfg_prediction(model, xt, t - 1, y, scale)


def pred_another_class_as_null(model, xt, t, y, scale):     # the "unconditional" call given the next class
    eps_c, eps_u = model(xt, t, y), model(xt, t, (y + 1) % model.num_classes)
    return eps_u + scale * (eps_c - eps_u)


def pred_float_labels(model, xt, t, y, scale):
    return cfg_prediction(model, xt, t, y.float(), scale)


UNCATALOGUED = [
    ("10.class_score", score_no_normaliser, ()), ("10.class_score", score_noise_variance_squared, ()),
    ("10.class_score", score_of_the_probability, ()), ("10.class_score", score_mixed_noising, ()),
    ("10.classifier_grad", clf_t_zero, ()), ("10.classifier_grad", clf_finite_differences, ()),
    ("10.classifier_grad", clf_next_label, ()), ("10.classifier_grad", clf_float32, ("dtype",)),
    ("10.guided_eps", guided_gamma_squared, ()), ("10.guided_eps", guided_last_step, ()),
    ("10.guided_eps", guided_fourth_root, ()), ("10.guided_eps", guided_score_returned, ()),
    ("10.label_dropout", drop_one_in_k, ()), ("10.label_dropout", drop_first_half_only, ()),
    ("10.label_dropout", drop_float_labels, ("dtype",)), ("10.label_dropout", drop_mask_returned, ("booleans",)),
    ("10.label_dropout", drop_kept_shifted, ("other values than -1",)),
    ("10.label_dropout", drop_in_place, ("in place",)),
    ("10.cfg", cfg_half_difference, ()), ("10.cfg", cfg_sum, ()), ("10.cfg", cfg_squared_scale, ()),
    ("10.cfg_prediction", pred_swapped_arguments, ()), ("10.cfg_prediction", pred_t_minus_one, ()),
    ("10.cfg_prediction", pred_another_class_as_null, ()),
    ("10.cfg_prediction", pred_float_labels, ("integers",)),
]


@pytest.mark.parametrize("exercise_id, fn, words", UNCATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(UNCATALOGUED)])
def test_uncatalogued_wrong_answers_fail(exercise_id, fn, words):
    r = check_fails(exercise_id, fn, *words)
    assert "could not evaluate" not in r.message, r.message


# ---------------------------------------------------------------------------------------------- written differently
def score_by_autograd(xt, t, y, weights, means, variances, labels, alpha_bar):
    """log p(y | x_t) by Bayes' rule, differentiated by autograd."""
    ab = alpha_bar[t]
    m, v = ab.sqrt() * means, ab * variances + 1 - ab
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        log_joint = (weights.log() - 0.5 * x.shape[1] * v.log()
                     - 0.5 * ((x[:, None, :] - m[None]) ** 2).sum(-1) / v)
        log_post = torch.logsumexp(log_joint[:, labels == y], 1) - torch.logsumexp(log_joint, 1)
        return torch.autograd.grad(log_post.sum(), x)[0]


def score_with_distributions(xt, t, y, weights, means, variances, labels, alpha_bar):
    """The two scores of torch.distributions mixtures (the class's weights renormalised, which changes nothing)."""
    ab = alpha_bar[t]

    def mix(keep):
        w = weights[keep] / weights[keep].sum()
        comp = td.Independent(td.Normal(ab.sqrt() * means[keep], (ab * variances[keep] + 1 - ab).sqrt()[:, None]
                                        .expand(-1, means.shape[1])), 1)
        return td.MixtureSameFamily(td.Categorical(probs=w), comp)

    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        diff = mix(labels == y).log_prob(x) - mix(torch.ones_like(labels, dtype=torch.bool)).log_prob(x)
        return torch.autograd.grad(diff.sum(), x)[0]


def score_per_component_loop(xt, t, y, weights, means, variances, labels, alpha_bar):
    ab = alpha_bar[t]
    num_c, den_c, num_a, den_a = 0, 0, 0, 0
    log_terms = []
    for k in range(len(weights)):
        m, v = ab.sqrt() * means[k], ab * variances[k] + 1 - ab
        log_terms.append(weights[k].log() - 0.5 * xt.shape[1] * v.log() - 0.5 * ((xt - m) ** 2).sum(1) / v)
    shift = torch.stack(log_terms, 1).max(1).values
    for k in range(len(weights)):
        m, v = ab.sqrt() * means[k], ab * variances[k] + 1 - ab
        p = (log_terms[k] - shift).exp()[:, None]
        num_a, den_a = num_a + p * (m - xt) / v, den_a + p
        if int(labels[k]) == y:
            num_c, den_c = num_c + p * (m - xt) / v, den_c + p
    return num_c / den_c - num_a / den_a


def score_package(xt, t, y, weights, means, variances, labels, alpha_bar):
    data = G.GMM(weights, means, variances[:, None, None] * torch.eye(xt.shape[1], dtype=xt.dtype,
                                                                        device=xt.device))
    betas = torch.cat([alpha_bar.new_zeros(1), 1 - alpha_bar[1:] / alpha_bar[:-1]])
    return exact.class_score(data, labels, xt, t, D.Schedule(betas.double()), y).to(xt.dtype)


def clf_func_grad(classifier, xt, t, y):
    def log_py(x):
        return torch.log_softmax(classifier(x, t), 1).gather(1, y[:, None]).sum()
    return torch.func.grad(log_py)(xt)


def clf_cross_entropy(classifier, xt, t, y):
    with torch.enable_grad():
        x = xt.detach().clone().requires_grad_()
        ce = F.cross_entropy(classifier(x, t), y, reduction="sum")
        return -torch.autograd.grad(ce, x)[0]


def clf_one_hot_and_logsumexp(classifier, xt, t, y):
    with torch.enable_grad():
        x = xt.detach().requires_grad_(True)
        logits = classifier(x, t)
        log_p = logits - torch.logsumexp(logits, 1, keepdim=True)
        g = torch.autograd.grad((F.one_hot(y, logits.shape[1]) * log_p).sum(), x)[0]
    return g.detach()


def clf_row_by_row(classifier, xt, t, y):
    out = []
    for i in range(xt.shape[0]):
        out.append(classifier_grad(classifier, xt[i:i + 1], t[i:i + 1], y[i:i + 1])[0])
    return torch.stack(out)


def guided_through_the_score(eps, grad, t, alpha_bar, gamma):
    s = (1 - alpha_bar[t]).sqrt().reshape(-1, *[1] * (eps.dim() - 1))
    score = -eps / s + gamma * grad
    return -s * score


def guided_addcmul(eps, grad, t, alpha_bar, gamma):
    sigma = torch.sqrt(1 - alpha_bar[t])[(...,) + (None,) * (eps.dim() - 1)]
    return torch.addcmul(eps, sigma, grad, value=-gamma)


def drop_bernoulli(y, p_uncond, generator):
    coins = torch.bernoulli(torch.full(y.shape, float(p_uncond), device=y.device), generator=generator).bool()
    return y.masked_fill(coins, -1)


def drop_upper_tail(y, p_uncond, generator):                # rand > 1 - p: the same probability, other coins
    out = y.clone()
    out[torch.rand(len(y), generator=generator, device=y.device) >= 1 - p_uncond] = -1
    return out


def drop_scalar_where(y, p_uncond, generator):
    return torch.where(torch.rand(y.shape[0], generator=generator) < p_uncond, -1, y)


def drop_package(y, p_uncond, generator):
    return guidance.drop_labels(y, p_uncond, generator=generator)


def cfg_convex(c, u, s):                                    # s eps_c + (1 - s) eps_u: the same formula
    return s * c + (1 - s) * u


def cfg_lerp(c, u, s):
    return torch.lerp(u, c, s)


def cfg_ho_salimans_w(c, u, s):                             # their form with w = s - 1
    w = s - 1
    return (1 + w) * c - w * u


def pred_one_batch(model, xt, t, y, scale):                 # one call on the doubled batch
    out = model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, -1)]))
    eps_c, eps_u = out.chunk(2)
    return torch.lerp(eps_u, eps_c, scale)


def pred_none_for_null(model, xt, t, y, scale):
    eps_u = model(xt, t, None)
    if scale == 0:
        return eps_u
    return eps_u + scale * (model(xt, t, y) - eps_u)


def pred_package(model, xt, t, y, scale):
    return guidance.classifier_free_guidance(model, y, scale)(xt, t)


ALTERNATIVES = [
    ("10.class_score", score_by_autograd), ("10.class_score", score_with_distributions),
    ("10.class_score", score_per_component_loop), ("10.class_score", score_package),
    ("10.classifier_grad", clf_func_grad), ("10.classifier_grad", clf_cross_entropy),
    ("10.classifier_grad", clf_one_hot_and_logsumexp), ("10.classifier_grad", clf_row_by_row),
    ("10.classifier_grad", clf_create_graph),
    ("10.guided_eps", guided_through_the_score), ("10.guided_eps", guided_addcmul),
    ("10.label_dropout", drop_bernoulli), ("10.label_dropout", drop_upper_tail),
    ("10.label_dropout", drop_scalar_where), ("10.label_dropout", drop_package),
    ("10.cfg", cfg_convex), ("10.cfg", cfg_lerp), ("10.cfg", cfg_ho_salimans_w), ("10.cfg", guidance.cfg_combine),
    ("10.cfg_prediction", pred_one_batch), ("10.cfg_prediction", pred_none_for_null),
    ("10.cfg_prediction", pred_package),
]


@pytest.mark.parametrize("exercise_id, fn", ALTERNATIVES, ids=[f"{i}-{k}" for k, (i, _) in enumerate(ALTERNATIVES)])
def test_correct_answers_written_differently_pass(exercise_id, fn):
    check_passes(exercise_id, fn)


# ---------------------------------------------------------------------------------------------- hostile
def _constant(*args):
    return torch.full_like(first_tensor(*args), -1)


def _mutating(exercise_id):
    """The solution, then every tensor input (and the module's parameters) changed in place."""
    solution = SOLUTIONS[exercise_id]

    def answer(*args):
        out = solution(*args)
        with torch.no_grad():
            for a in args:
                for p in [a] if isinstance(a, torch.Tensor) else list(getattr(a, "parameters", list)()):
                    if p.dtype != torch.bool:
                        p.add_(1)
        return out
    return answer


_COUNTER = itertools.count()


def _different_every_time(*args):                            # a new random tensor at every call
    x = first_tensor(*args)
    g = torch.Generator().manual_seed(next(_COUNTER))
    if x.is_floating_point():
        return torch.randn(x.shape, generator=g, dtype=x.dtype)
    return torch.randint(-1, 3, x.shape, generator=g, dtype=x.dtype)


HOSTILE = {"returns its first tensor input": first_tensor, "returns zeros": zeros_like_first,
           "returns a constant": _constant, "returns noise": _different_every_time}


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("exercise_id", IDS)
def test_hostile_answers_fail(exercise_id, kind):
    r = check(exercise_id, HOSTILE[kind], verbose=False)
    assert not r.passed and "could not evaluate" not in r.message, r.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_an_answer_that_mutates_its_inputs_fails(exercise_id):
    check_fails(exercise_id, _mutating(exercise_id), "in place")


@pytest.mark.parametrize("answer", [lambda y, p, g: torch.full_like(y, -1).as_subclass(_Liar),
                                    lambda y, p, g: drop_labels(y, p, g).float(),
                                    lambda y, p, g: drop_labels(y, p, g).as_subclass(_Liar)])
def test_dishonest_labels_fail(answer):
    """What the generic red team does to floating outputs, done to the integer labels: a subclass of torch.Tensor
    and a float cast are refused."""
    r = check("10.label_dropout", answer, verbose=False)
    assert not r.passed and "could not evaluate" not in r.message, r.message


class _Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("equal", "allclose"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})
