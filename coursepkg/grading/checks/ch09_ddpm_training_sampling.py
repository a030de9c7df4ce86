r"""Checks of the chapter 09 exercises (``solutions/09_ddpm_training_sampling.ipynb``): training and sampling a DDPM.

The answers work with the schedule as plain tensors, in the package's indexing convention (as chapter 08's):
``betas`` and ``alpha_bar`` have ``T + 1`` entries indexed by ``t`` itself (entry 0 is ``t = 0``: ``beta_0 = 0``,
``alpha_bar_0 = 1``). The random schedules, ``_schedule``, are chapter 08's (every ``beta_t`` in [0.02, 0.3]).

- ``09.diffusion_loss`` is random (it draws ``t`` and the noise), so its check is a custom one. The answer gets
  a small noise predictor, an ``nn.Module`` whose ``forward(xt, t)`` is recorded (:class:`~coursepkg.grading.kit.
  Recorder`), and a ``torch.Generator``. From what the model was called with, the check reads the steps ``t``
  (integers, one per row, uniform on ``1..T``: a chi-square test, after the catalogued ranges ``0..T-1`` and
  ``1..T-1``, which a batch of hundreds of rows always shows) and recovers the noise
  ``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``, which must look like independent standard normal
  draws (else the slip of ``x_t`` whose recovered noise does is named). Given those, the loss is known exactly:
  ``mean((eps - model(x_t, t))^2)``, compared to round-off, with the typical wrong targets and reductions named,
  and so is its gradient in the model's parameters. On the first trial two more calls: with a generator seeded
  alike, the same ``t``, ``x_t`` and loss (so both are drawn from ``generator``; which one is not is named), with
  another seed, new ones (no hard-coded seed, no ``t`` from elsewhere).
- ``09.ddpm_step``, ``09.ddim_step`` and ``09.langevin_step`` are given their noise ``z``, so they are deterministic:
  :func:`~coursepkg.grading.kit.function_check` compares them with the package's formulas
  (:class:`coursepkg.diffusion.sampling.DDPMSampler`, :class:`~coursepkg.diffusion.sampling.DDIMSampler`,
  :func:`~coursepkg.diffusion.sampling.langevin`; ``tests/test_checks_ch09.py`` checks that the references here
  are theirs). ``t`` is an int, one step for the whole batch, as a sampler takes it; the specs include the last
  step (``t = 1``, or ``t' = 0`` for DDIM), skipped steps, both variances and several ``eta``.
- ``09.chamfer`` compares with :func:`coursepkg.metrics.chamfer` (the KAIST definition: a sum over both sets), on
  sets of different sizes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coursepkg import diffusion as D
from coursepkg import metrics
from coursepkg.grading.checks.ch08_ddpm_derivations import _from_alpha_bar, _from_betas, _schedule
from coursepkg.grading.kit import (
    N_SIGMA,
    RANDOM_MESSAGES,
    Case,
    CheckFailure,
    Mistake,
    Recorder,
    Slip,
    call,
    close,
    compare,
    compare_gradients,
    describe_inputs,
    distinct,
    function_check,
    independence_test,
    looks_uniform,
    normal_test,
    random_cases,
    register,
    require_callable,
    require_like,
)

F64 = torch.float64


def _64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", F64)


def _rows(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped ``(N, 1, ..., 1)`` against ``like``."""
    return values[t].reshape(-1, *[1] * (like.dim() - 1))


# --------------------------------------------------------------------------------------------------
# 09.diffusion_loss: the simplified loss of one batch
# --------------------------------------------------------------------------------------------------
LOSS_SPECS = [((512, 2), 8), ((400, 3), 13), ((256, 1, 3, 3), 6)]     # (shape of x0, T)
LOSS_SEED = 9100


class _Denoiser(nn.Module):
    """The noise predictor handed to the answer: ``a * x_t + b * tanh(x_t) * emb[t] + c``, elementwise (so it
    runs in the dtype of its input, and one row's output depends on that row alone), with parameters to
    differentiate. It accepts ``t`` in ``0..T`` (so that the check, not an index error, names a ``t`` drawn from
    ``0..T-1``) and refuses what is not a step: a float, a tensor of another shape, a value out of range."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, emb: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.a, self.b, self.c = nn.Parameter(a.clone()), nn.Parameter(b.clone()), nn.Parameter(c.clone())
        self.emb = nn.Parameter(emb.clone())

    @classmethod
    def random(cls, case: Case, shape, T: int) -> _Denoiser:
        event = tuple(shape[1:])
        return cls(case.randn(*event, scale=0.3, shift=0.5), case.randn(*event, scale=0.5),
                   case.randn(T + 1), case.randn(*event, scale=0.3))

    def copy(self) -> _Denoiser:
        return _Denoiser(self.a.detach(), self.b.detach(), self.emb.detach(), self.c.detach())

    @property
    def T(self) -> int:
        return self.emb.shape[0] - 1

    def forward(self, xt, t):
        if not isinstance(xt, torch.Tensor) or tuple(xt.shape[1:]) != tuple(self.a.shape):
            got = list(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
            raise CheckFailure(f"the model was called with x_t of shape {got}: call it as model(x_t, t) with x_t "
                               f"shaped like x0, (N, {', '.join(map(str, self.a.shape))})")
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise CheckFailure(f"the model was called with t of type {type(t).__name__}: pass the integer steps, "
                               "a tensor (N,) with one step per row")
        steps = torch.as_tensor(t)
        if steps.is_floating_point() or steps.is_complex() or steps.dtype == torch.bool or steps.dim() > 1:
            raise CheckFailure(f"the model was called with t of dtype {str(steps.dtype).replace('torch.', '')} and "
                               f"shape {list(steps.shape)}: pass the integer steps as drawn, an int64 tensor (N,)")
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > self.T):
            raise CheckFailure(f"the model was called with steps from {int(steps.min())} to {int(steps.max())}, "
                               f"outside 1..T = 1..{self.T}: T is len(alpha_bar) - 1")
        return self.a * xt + self.b * torch.tanh(xt) * _rows(self.emb, steps.to(self.emb.device), xt) + self.c

    def reference(self, xt: torch.Tensor, t: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """The output in float64 on the CPU, from ``params`` (name -> tensor; default the model's own)."""
        p = params or {k: _64(v) for k, v in self.named_parameters()}
        return p["a"] * xt + p["b"] * torch.tanh(xt) * _rows(p["emb"], t, xt) + p["c"]


def _diffusion_loss(model, x0, alpha_bar, generator):
    """:func:`coursepkg.diffusion.simplified_loss` behind the exercise's signature: ``t`` uniform on ``1..T`` and
    the noise drawn from ``generator`` (``t`` first), ``x_t`` in the answer's dtype."""
    return D.simplified_loss(model, x0, _from_alpha_bar(alpha_bar), generator=generator)


LOSS_HINT = ("T = len(alpha_bar) - 1; t = torch.randint(1, T + 1, (N,), generator=generator, device=x0.device); "
             "eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device); x_t = "
             "sqrt(alpha_bar[t]) * x0 + sqrt(1 - alpha_bar[t]) * eps, with alpha_bar[t] reshaped to (N, 1, ..., 1); "
             "the loss is ((eps - model(x_t, t)) ** 2).mean()")
ONE_T = ("one t for the whole batch", "every row gets its own step: draw t of shape (N,), "
         "torch.randint(1, T + 1, (N,), generator=generator), and pass that tensor to the model")
ZERO_TO_T_MINUS_1 = ("t drawn from 0..T-1 (torch.randint(0, T)), but the steps are 1..T", "the schedule is indexed "
                     "by t itself: entry 0 of alpha_bar is t = 0, no noise at all. Draw t = torch.randint(1, T + 1, "
                     "(N,), generator=generator)")
ZERO_INCLUDED = ("t drawn from 0..T, including t = 0 (no noise)", "alpha_bar[0] = 1 is the data itself, not a step: "
                 "draw t = torch.randint(1, T + 1, (N,), generator=generator)")
MISSING_T = ("t drawn from 1..T-1: the last step T is never trained", "torch.randint's upper bound is exclusive: "
             "torch.randint(1, T + 1, (N,), generator=generator) draws 1..T, with T = len(alpha_bar) - 1")
MODEL_ON_X0 = ("the model called on x0 instead of x_t", "the network predicts the noise of the noised point: "
               "model(x_t, t)")
DETACHED_LOSS = ("the loss is detached from the model", "a training loss must stay differentiable in the model's "
                 "parameters: no .item(), .detach(), numpy or torch.no_grad() around the model's output")
T_NOT_FROM_GENERATOR = ("t not drawn from the generator", "the same generator must give the same loss: draw t with "
                        "torch.randint(1, T + 1, (N,), generator=generator, device=x0.device)")
EPS_NOT_FROM_GENERATOR = ("the noise not drawn from the generator", "the same generator must give the same loss: draw "
                          "eps with torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) "
                          "(or torch.randn_like(x0, generator=generator))")
SAME_T = ("the same t whatever the generator", "t is drawn afresh from the generator at every call (no t from "
          "elsewhere, no torch.manual_seed or generator of your own inside the function)")
SAME_EPS = ("the same noise whatever the generator", "eps is drawn afresh from the generator at every call (no "
            "stored noise, no torch.manual_seed or generator of your own inside the function)")
NOISE_MESSAGES = {**RANDOM_MESSAGES,
                  "same rows": ("the same noise for every row", "draw eps with the full shape of x0, (N, ...)"),
                  "same columns": ("the same noise for every coordinate", "draw eps with the full shape of x0, not "
                                   "(N, 1)"),
                  "correlated columns": ("the noise of different coordinates is correlated", "draw eps with the "
                                         "full shape of x0: independent standard normal entries")}


def _x_slips(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, ab: torch.Tensor):
    """``(name, hint, noise)``: the noise recovered from ``x_t`` under each typical slip of ``x_t`` (the rows it is
    defined on): it looks standard normal when the answer made that slip."""
    a = _rows(ab, t, x0)
    later = t >= 2
    a_prev = _rows(ab, t[later] - 1, x0[later])
    return [
        ("the square root forgotten on alpha_bar_t in x_t", LOSS_HINT, (xt - a * x0) / (1 - a).sqrt()),
        ("the square root forgotten on 1 - alpha_bar_t in x_t", LOSS_HINT, (xt - a.sqrt() * x0) / (1 - a)),
        ("both square roots forgotten in x_t", LOSS_HINT, (xt - a * x0) / (1 - a)),
        ("x0 and eps swapped in x_t", LOSS_HINT, (xt - (1 - a).sqrt() * x0) / a.sqrt()),
        ("t off by one: x_t made with alpha_bar[t - 1] and the model told t", "x_t and the model's t are the same "
         "step: x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps, then model(x_t, t)",
         (xt[later] - a_prev.sqrt() * x0[later]) / (1 - a_prev).sqrt()),
    ]


def _looks_normal(u: torch.Tensor) -> bool:
    u = u.reshape(u.shape[0], -1)
    return bool(torch.isfinite(u).all()) and independence_test(u) is None and normal_test(u) is None


def _recorded_batch(rec: Recorder, x0: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, t)`` the model was called with, float64 ``(N, ...)`` and int64 ``(N,)`` (the calls' rows put
    together in order, a call repeated identically counted once)."""
    N = x0.shape[0]
    if rec.wrapped:
        raise CheckFailure("the model was called inside a torch.func transform the check cannot read: call "
                           "model(x_t, t) on the batch")
    if not rec.calls:
        raise CheckFailure("the model was never called: the loss compares eps with the model's prediction "
                           "model(x_t, t)")
    seen, xs, ts = set(), [], []
    for c in rec.calls:
        xt = c.args[0] if c.args else c.kwargs.get("xt")
        t = c.args[1] if len(c.args) > 1 else c.kwargs.get("t")
        if not isinstance(xt, torch.Tensor):
            raise CheckFailure("call the model as model(x_t, t), x_t a tensor shaped like x0")
        t = torch.as_tensor(t).reshape(-1).long()
        if t.numel() == 1 and xt.shape[0] > 1:
            raise Mistake(*ONE_T)
        key = (xt.to(F64).numpy().tobytes(), t.numpy().tobytes())
        if key in seen:
            continue
        seen.add(key)
        xs.append(xt.to(F64))
        ts.append(t)
    xt, t = torch.cat(xs), torch.cat(ts)
    if xt.shape[0] != N or t.shape[0] != N:
        raise CheckFailure(f"the model was called on {xt.shape[0]} rows in all, expected N = {N}, one x_t per row "
                           "of x0: call model(x_t, t) once on the whole batch")
    if N > 1 and bool((t == t[0]).all()):
        raise Mistake(*ONE_T)
    return xt, t


def _judge_steps(t: torch.Tensor, T: int, inputs: str) -> None:
    """``t`` uniform on ``1..T``: the catalogued ranges first, then a chi-square test of the counts."""
    lo, hi = int(t.min()), int(t.max())
    if lo == 0:
        raise Mistake(*(ZERO_TO_T_MINUS_1 if hi < T else ZERO_INCLUDED))
    if hi < T:
        raise Mistake(*MISSING_T)
    counts = torch.bincount(t, minlength=T + 1)[1:].to(F64)
    expected = t.numel() / T
    chi2, df = float(((counts - expected) ** 2 / expected).sum()), T - 1
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))    # Wilson-Hilferty
    if z > N_SIGMA:
        raise CheckFailure(f"the steps t are not uniform on 1..T (for inputs {inputs}): their counts "
                           f"{[int(c) for c in counts]} are further from {expected:.0f} each than chance allows; "
                           "draw t = torch.randint(1, T + 1, (N,), generator=generator)")


def _judge_noise(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, ab: torch.Tensor, inputs: str) -> torch.Tensor:
    """The noise of ``x_t``, ``(x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``, which must look like
    independent standard normal draws; a slip of ``x_t`` whose recovered noise does is named."""
    if close(xt, x0, 1e-6, 1e-8):
        raise Mistake(*MODEL_ON_X0)
    a = _rows(ab, t, x0)
    eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
    u = eps.reshape(eps.shape[0], -1)
    if _looks_normal(u):
        return eps
    for name, hint, alt in _x_slips(x0, xt, t, ab):
        if alt.shape[0] > 1 and _looks_normal(alt):
            raise Mistake(name, hint)
    dependence = independence_test(u) if bool(torch.isfinite(u).all()) else None
    if dependence is not None:
        raise Mistake(*NOISE_MESSAGES[dependence])
    if looks_uniform(u):
        raise Mistake(*RANDOM_MESSAGES["uniform"])
    raise CheckFailure(f"the noise of the x_t the model was called with, (x_t - sqrt(alpha_bar_t) x0) / "
                       f"sqrt(1 - alpha_bar_t), does not look like standard normal draws (for inputs {inputs}): it "
                       f"has mean {u.mean().item():.3g} and standard deviation {u.std().item():.3g}; {LOSS_HINT}")


def _loss_mistakes(x0, xt, eps, out):
    err = eps - out
    return [
        ("the target x0 instead of eps", f"the network predicts the noise: {LOSS_HINT}", ((x0 - out) ** 2).mean()),
        ("the target x_t instead of eps", f"the network predicts the noise: {LOSS_HINT}", ((xt - out) ** 2).mean()),
        ("a sum instead of a mean", "the loss is the mean over the batch and the dimensions, like F.mse_loss: "
         "((eps - model(x_t, t)) ** 2).mean()", (err**2).sum()),
        ("summed over the dimensions and averaged over the batch", "this exercise's loss averages over every entry, "
         "like F.mse_loss: ((eps - model(x_t, t)) ** 2).mean()", (err**2).flatten(1).sum(1).mean()),
        ("the absolute error instead of the squared error", LOSS_HINT, err.abs().mean()),
        ("the square root of the mean squared error", LOSS_HINT, (err**2).mean().sqrt()),
    ]


def _call_loss(f, case: Case, model: _Denoiser, x0, alpha_bar, gen_seed: int):
    rec = Recorder.on_module(model)
    gen = torch.Generator(device=case.device).manual_seed(gen_seed)
    inputs = describe_inputs(x0=x0, T=alpha_bar.shape[0] - 1)
    got = call(f, model, x0, alpha_bar, gen)
    require_like(got, (), dtype=case.dtype, device=case.device, what="the loss", inputs=inputs,
                 shape_hints=[((x0.shape[0],), "average over the batch too: the loss is one number, "
                               "((eps - model(x_t, t)) ** 2).mean()"), (tuple(x0.shape), "average the squared "
                               "errors: the loss is one number, ((eps - model(x_t, t)) ** 2).mean()")])
    return got, rec, inputs


def _judge_loss(got, rec: Recorder, model: _Denoiser, x0, alpha_bar, case: Case, inputs: str):
    """Everything about one call of the answer; returns the recorded ``(x_t, t)``."""
    T = alpha_bar.shape[0] - 1
    x64, ab = _64(x0), _64(alpha_bar)
    xt, t = _recorded_batch(rec, x64, T)
    _judge_steps(t, T, inputs)
    eps = _judge_noise(x64, xt, t, ab, inputs)
    with torch.no_grad():
        out = model.reference(xt, t)
    expected = ((eps - out) ** 2).mean()
    rtol, atol = case.tol
    compare(got, expected.to(**case.like), what="the loss", inputs=inputs, rtol=rtol, atol=atol,
            mistakes=distinct([(n, h, v.to(**case.like)) for n, h, v in _loss_mistakes(x64, xt, eps, out)],
                              expected, rtol, atol))

    def reference(params64):
        return ((eps - model.reference(xt, t, params64)) ** 2).mean()

    compare_gradients(got, dict(model.named_parameters()), reference, what="the loss", inputs=inputs,
                      detached=DETACHED_LOSS)
    return xt, t


def _judge_generator(f, case: Case, model: _Denoiser, x0, alpha_bar, first, gen_seed: int) -> None:
    """The same seed gives the same ``t``, ``x_t`` and loss; another seed other ones."""
    got, xt, t = first
    T = alpha_bar.shape[0] - 1
    again, rec, _ = _call_loss(f, case, model.copy(), x0.clone(), alpha_bar.clone(), gen_seed)
    xt2, t2 = _recorded_batch(rec, _64(x0), T)
    if not torch.equal(t2, t):
        raise Mistake(*T_NOT_FROM_GENERATOR)
    if not close(xt2, xt, *case.tol):
        raise Mistake(*EPS_NOT_FROM_GENERATOR)
    if not close(again, got, *case.tol):
        raise CheckFailure("two calls with generators seeded alike gave the same t and x_t but different losses: "
                           "compute the loss from them alone")
    other, rec, _ = _call_loss(f, case, model.copy(), x0.clone(), alpha_bar.clone(), gen_seed + 1)
    xt3, t3 = _recorded_batch(rec, _64(x0), T)
    if torch.equal(t3, t):
        raise Mistake(*SAME_T)
    a, a3 = _rows(_64(alpha_bar), t, xt), _rows(_64(alpha_bar), t3, xt3)
    eps, eps3 = (xt - a.sqrt() * _64(x0)) / (1 - a).sqrt(), (xt3 - a3.sqrt() * _64(x0)) / (1 - a3).sqrt()
    if close(eps3, eps, 1e-4, 1e-5):
        raise Mistake(*SAME_EPS)


@register("09.diffusion_loss", "the simplified loss of one batch: t, the noise, x_t and the squared error",
          solution=_diffusion_loss)
def check_diffusion_loss(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(LOSS_SEED) for spec in LOSS_SPECS]
    for i, (case, spec) in enumerate(trials):
        torch.manual_seed(LOSS_SEED + i)              # an answer that draws from torch's generator: the same verdict
        gen_seed = LOSS_SEED + 10 * i
        shape, T = spec
        _, alpha_bar = _schedule(case, T)
        x0 = case.randn(*shape, scale=1.5, shift=2.0)
        model = _Denoiser.random(case, shape, T)
        saved = model.copy()
        got, rec, inputs = _call_loss(f, case, model, x0, alpha_bar, gen_seed)
        xt, t = _judge_loss(got, rec, model, x0, alpha_bar, case, inputs)
        if i == 0:
            _judge_generator(f, case, saved, x0, alpha_bar, (got.detach(), xt, t), gen_seed)
    return (f"matches the loss of the t and x_t it gave the model (value and gradient) on {len(trials)} random "
            "inputs: t is uniform on 1..T, one step per row, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps "
            "with standard normal eps, and both are drawn from the generator (the same seed gives the same loss, "
            "another seed another)")


# --------------------------------------------------------------------------------------------------
# 09.ddpm_step: one ancestral step, given its noise
# --------------------------------------------------------------------------------------------------
# (shape of x, T, t, variance): the last step (t = 1) with both variances, the first (t = T), the others between
DDPM_SPECS = [((6, 6), 7, 1, "beta"), ((6, 6), 7, 1, "beta_tilde"), ((9, 3), 12, 2, "beta_tilde"),
              ((9, 3), 12, 12, "beta"), ((4, 2, 3, 4), 9, 5, "beta_tilde"), ((5, 2), 9, 6, "beta")]


def _ddpm_step(eps_hat, t, xt, z, betas, alpha_bar, variance):
    """:meth:`coursepkg.diffusion.sampling.DDPMSampler.step` (no clipping) with the noise ``z`` given: the posterior
    mean of ``x0_hat`` (:func:`coursepkg.diffusion.x0_from_eps`, :func:`coursepkg.diffusion.q_posterior`) plus
    ``sigma_t z``, nothing added at ``t = 1``."""
    s = _from_betas(betas)
    e, x = _64(eps_hat), _64(xt)
    mean, tilde = D.q_posterior(D.x0_from_eps(x, t, e, s), x, t, s)
    if t == 1:
        return mean.to(xt)
    var = s.betas[t] if variance == "beta" else tilde
    return (mean + var.sqrt() * _64(z)).to(xt)


def _ddpm_inputs(case: Case, spec) -> dict:
    shape, T, t, variance = spec
    betas, alpha_bar = _schedule(case, T)
    return {"eps_hat": case.randn(*shape), "t": t, "xt": case.randn(*shape), "z": case.randn(*shape),
            "betas": betas, "alpha_bar": alpha_bar, "variance": variance}


def _right_mean(e, t, x, b, ab):
    return (x - b[t] / (1 - ab[t]).sqrt() * e) / (1 - b[t]).sqrt()


def _right_var(t, b, ab, variance):
    return b[t] if variance == "beta" else (1 - ab[t - 1]) / (1 - ab[t]) * b[t]


def _ddpm(mean=_right_mean, var=_right_var, *, last_noise=False, noise=True, root=torch.sqrt):
    """A DDPM step with some of its parts replaced (the slips): ``mean(e, t, x, b, ab)``, ``var(t, b, ab,
    variance)``, noise added at ``t = 1`` too (``last_noise``), never (``noise=False``), ``root`` of the variance."""
    def value(e, t, x, z, b, ab, variance):
        m = mean(e, t, x, b, ab)
        if not noise or (t == 1 and not last_noise):
            return m
        return m + root(var(t, b, ab, variance)) * z
    return value


def _coefficient_mean(prev_index):
    """The posterior mean in its (x0_hat, x_t) form with ``alpha_bar[prev_index(t)]`` for alpha_bar_{t-1}."""
    def mean(e, t, x, b, ab):
        x0 = (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
        ap = ab[prev_index(t)]
        return ap.sqrt() * b[t] / (1 - ab[t]) * x0 + (1 - b[t]).sqrt() * (1 - ab[t - 1]) / (1 - ab[t]) * x
    return mean


def _zero_indexed_ddpm(e, t, x, z, b, ab, variance):
    """Every tensor read as if entry 0 were step 1: betas[t - 1], alpha_bar[t - 1] (and alpha_bar[t - 2])."""
    beta, a, ap = b[t - 1], ab[t - 1], ab[t - 2]
    mean = (x - beta / (1 - a).sqrt() * e) / (1 - beta).sqrt()
    if t == 1:
        return mean
    var = beta if variance == "beta" else (1 - ap) / (1 - a) * beta
    return mean + var.sqrt() * z


DDPM_HINT = ("mean = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_t), alpha_t = 1 - beta_t; "
             "x_{t-1} = mean + sigma_t z for t > 1, the mean alone at t = 1")
VAR_HINT = ("sigma_t^2 is beta_t for variance='beta' and beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) "
            "* beta_t for variance='beta_tilde'")

function_check(
    "09.ddpm_step", "one ancestral sampling step of a DDPM, given the noise",
    solution=_ddpm_step, inputs=_ddpm_inputs, specs=DDPM_SPECS, seed=9200, what="x_{t-1}",
    describe=["xt", "t", "variance"],
    mistakes=[
        Slip("noise added at the last step (t = 1)", "the step from x_1 gives the sample x_0 itself: return the mean, "
             "with no noise, at t = 1", _ddpm(last_noise=True)),
        Slip("beta_t used where beta-tilde_t was asked (variance='beta_tilde')", VAR_HINT,
             _ddpm(var=lambda t, b, ab, v: b[t])),
        Slip("beta-tilde_t used where beta_t was asked (variance='beta')", VAR_HINT,
             _ddpm(var=lambda t, b, ab, v: (1 - ab[t - 1]) / (1 - ab[t]) * b[t])),
        Slip("the variance times z, not the standard deviation", f"the noise is scaled by sigma_t, the square root "
             f"of the variance: {VAR_HINT}", _ddpm(root=lambda v: v)),
        Slip("the beta-tilde ratio upside down", VAR_HINT,
             _ddpm(var=lambda t, b, ab, v: b[t] if v == "beta" else (1 - ab[t]) / (1 - ab[t - 1]) * b[t])),
        Slip("no noise added (the mean returned at every step)", f"ancestral sampling draws x_{{t-1}} from "
             f"p(x_{{t-1}} | x_t): {DDPM_HINT}", _ddpm(noise=False)),
        Slip("sqrt(alpha_bar_t) where sqrt(alpha_t) belongs (dividing by the running product)", DDPM_HINT,
             _ddpm(mean=lambda e, t, x, b, ab: (x - b[t] / (1 - ab[t]).sqrt() * e) / ab[t].sqrt())),
        Slip("alpha_t where alpha_bar_t belongs (sqrt(1 - alpha_t) = sqrt(beta_t) in the noise's coefficient)",
             DDPM_HINT, _ddpm(mean=lambda e, t, x, b, ab: (x - b[t].sqrt() * e) / (1 - b[t]).sqrt())),
        Slip("the square root forgotten on 1 - alpha_bar_t", DDPM_HINT,
             _ddpm(mean=lambda e, t, x, b, ab: (x - b[t] / (1 - ab[t]) * e) / (1 - b[t]).sqrt())),
        Slip("the square root forgotten on alpha_t", DDPM_HINT,
             _ddpm(mean=lambda e, t, x, b, ab: (x - b[t] / (1 - ab[t]).sqrt() * e) / (1 - b[t]))),
        Slip("sqrt(1 - alpha_bar_t) as the coefficient of eps_hat (that is x0_hat's)", DDPM_HINT,
             _ddpm(mean=lambda e, t, x, b, ab: (x - (1 - ab[t]).sqrt() * e) / (1 - b[t]).sqrt())),
        Slip("x0_hat taken for the posterior mean", f"x0_hat is only the ingredient: the posterior mean weighs it "
             f"with x_t; {DDPM_HINT}", _ddpm(mean=lambda e, t, x, b, ab: (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt())),
        Slip("alpha_bar_t where alpha_bar_{t-1} belongs (in the coefficient of x0_hat)", "the posterior mean is "
             "sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0_hat + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / "
             "(1 - alpha_bar_t) * x_t", _ddpm(mean=_coefficient_mean(lambda t: t))),
        Slip("t off by one: the tensors indexed from 0 (betas[t - 1], alpha_bar[t - 1])", "the schedule's tensors "
             "have T + 1 entries indexed by t itself: beta_t is betas[t], alpha_bar_t is alpha_bar[t]",
             _zero_indexed_ddpm),
    ])


# --------------------------------------------------------------------------------------------------
# 09.ddim_step: one DDIM step from t to t_prev, given the noise
# --------------------------------------------------------------------------------------------------
# (shape of x, T, t, t_prev, eta): skipped steps with eta 0, 1/2 and 1, the last step to t' = 0, an unskipped step
DDIM_SPECS = [((6, 6), 10, 10, 7, 0.0), ((6, 6), 10, 4, 1, 1.0), ((9, 3), 12, 3, 0, 0.5), ((9, 3), 12, 12, 8, 1.0),
              ((4, 2, 3, 4), 9, 7, 4, 0.5), ((5, 4), 9, 6, 5, 1.0), ((5, 4), 9, 5, 0, 0.0)]


def _ddim_step(eps_hat, t, t_prev, xt, alpha_bar, eta, z):
    """:meth:`coursepkg.diffusion.sampling.DDIMSampler.step` (no clipping) from ``t`` to ``t_prev``, with the noise
    ``z`` given."""
    ab = _64(alpha_bar)
    e, x = _64(eps_hat), _64(xt)
    x0 = D.x0_from_eps(x, t, e, _from_alpha_bar(alpha_bar))
    a, ap = ab[t], ab[t_prev]
    sigma = eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()
    return (ap.sqrt() * x0 + (1 - ap - sigma**2).clamp_min(0).sqrt() * e + sigma * _64(z)).to(xt)


def _ddim_inputs(case: Case, spec) -> dict:
    shape, T, t, t_prev, eta = spec
    _, alpha_bar = _schedule(case, T)
    return {"eps_hat": case.randn(*shape), "t": t, "t_prev": t_prev, "xt": case.randn(*shape),
            "alpha_bar": alpha_bar, "eta": eta, "z": case.randn(*shape)}


def _right_sigma(eta, a, ap):
    return eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()


def _ddim(*, a_of=lambda ab, t: ab[t], ap_of=lambda ab, t, tp: ab[tp], x0_a=None, sigma=_right_sigma,
          coef=lambda ap, s: (1 - ap - s**2).clamp_min(0).sqrt(), noise=True):
    """A DDIM step with some of its parts replaced (the slips): ``a_of`` (alpha_bar_t), ``ap_of``
    (alpha_bar_{t'}), ``x0_a`` (the alpha_bar of x0_hat, default ``a_of``'s), ``sigma(eta, a, ap)``, ``coef(ap,
    sigma)`` of eps_hat, the noise added or not."""
    def value(e, t, tp, x, ab, eta, z):
        a, ap = a_of(ab, t), ap_of(ab, t, tp)
        a0 = a if x0_a is None else x0_a(ab, t)
        s = sigma(eta, a, ap)
        out = ap.sqrt() * (x - (1 - a0).sqrt() * e) / a0.sqrt() + coef(ap, s) * e
        return out + s * z if noise else out
    return value


DDIM_HINT = ("x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t); x_{t'} = sqrt(alpha_bar_{t'}) "
             "x0_hat + sqrt(1 - alpha_bar_{t'} - sigma^2) eps_hat + sigma z, with alpha_bar_{t'} = alpha_bar[t_prev]")
SIGMA_HINT = "sigma = eta * sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_{t'})"

function_check(
    "09.ddim_step", "one DDIM step from t to t_prev, given the noise",
    solution=_ddim_step, inputs=_ddim_inputs, specs=DDIM_SPECS, seed=9300, what="x_{t'}",
    describe=["xt", "t", "t_prev", "eta"],
    mistakes=[
        Slip("alpha_t (one step, alpha_bar_t / alpha_bar_{t-1}) where alpha_bar_t belongs in x0_hat", f"x_t came "
             f"from x0 through all t steps: {DDIM_HINT}", _ddim(x0_a=lambda ab, t: ab[t] / ab[t - 1])),
        Slip("the coefficient of eps_hat without its square root", f"1 - alpha_bar_{{t'}} - sigma^2 is the variance "
             f"left for the predicted noise; its square root scales eps_hat: {DDIM_HINT}",
             _ddim(coef=lambda ap, s: 1 - ap - s**2)),
        Slip("sigma without its factor sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t))", SIGMA_HINT,
             _ddim(sigma=lambda eta, a, ap: eta * (1 - a / ap).sqrt())),
        Slip("sigma's ratio upside down: sqrt((1 - alpha_bar_t) / (1 - alpha_bar_{t'}))", SIGMA_HINT,
             _ddim(sigma=lambda eta, a, ap: eta * ((1 - a) / (1 - ap) * (1 - a / ap)).sqrt())),
        Slip("eta under the square root", SIGMA_HINT,
             _ddim(sigma=lambda eta, a, ap: (eta * (1 - ap) / (1 - a) * (1 - a / ap)).sqrt())),
        Slip("eta ignored: sigma = 0 always (deterministic)", f"eta scales the noise: {SIGMA_HINT}",
             _ddim(sigma=lambda eta, a, ap: _right_sigma(0.0, a, ap))),
        Slip("eta ignored: sigma as at eta = 1 always", f"eta scales the noise: {SIGMA_HINT}",
             _ddim(sigma=lambda eta, a, ap: _right_sigma(1.0, a, ap))),
        Slip("sigma^2 not subtracted in the coefficient of eps_hat", DDIM_HINT,
             _ddim(coef=lambda ap, s: (1 - ap).sqrt())),
        Slip("the noise sigma * z not added", DDIM_HINT, _ddim(noise=False)),
        Slip("t_prev = t - 1 assumed (alpha_bar[t - 1] for alpha_bar_{t'})", f"with skipped steps the next step is "
             f"the given t_prev, not t - 1: {DDIM_HINT}", _ddim(ap_of=lambda ab, t, tp: ab[t - 1])),
        Slip("alpha_bar_0 is not 1 at the last step (t_prev = 0 read as alpha_bar[1])", "alpha_bar[0] = 1 is t = 0, "
             "the data: the last step returns x0_hat (sigma = 0 there) with alpha_bar_{t'} = alpha_bar[t_prev] and "
             "no special case", _ddim(ap_of=lambda ab, t, tp: ab[max(tp, 1)])),
        Slip("t off by one: the tensors indexed from 0 (alpha_bar[t - 1], alpha_bar[t_prev - 1])", "alpha_bar has "
             "T + 1 entries indexed by t itself: alpha_bar_t is alpha_bar[t], alpha_bar_{t'} is alpha_bar[t_prev] "
             "(alpha_bar[0] = 1)", _ddim(a_of=lambda ab, t: ab[t - 1], ap_of=lambda ab, t, tp: ab[tp - 1])),
    ])


# --------------------------------------------------------------------------------------------------
# 09.langevin_step: one step of Langevin dynamics, given the noise
# --------------------------------------------------------------------------------------------------
LANGEVIN_SPECS = [((50, 2), 0.01), ((30, 3), 0.2), ((8, 8), 0.5), ((4, 1, 3, 3), 0.05)]   # (shape of x, eta)


class _Score:
    """The score of ``N(m, diag(v))``, ``-(x - m) / v``, as a function of ``x`` (in ``x``'s dtype)."""

    def __init__(self, m: torch.Tensor, v: torch.Tensor):
        self.m, self.v = m, v

    def __repr__(self) -> str:
        return "<the score function of the check>"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise CheckFailure(f"score was called with a {type(x).__name__}: call it on the tensor x, score(x)")
        return -(x - self.m.to(x.device)) / self.v.to(x.device)


def _langevin_step(x, score, step_size, z):
    """:func:`coursepkg.diffusion.sampling.langevin`'s step, ``x + eta * score(x) + sqrt(2 eta) z``."""
    x64 = _64(x)
    return (x64 + step_size * score(x64) + math.sqrt(2 * step_size) * _64(z)).to(x)


def _langevin_inputs(case: Case, spec) -> dict:
    shape, eta = spec
    event = tuple(shape[1:])
    return {"x": case.randn(*shape, scale=1.5), "score": _Score(case.randn(*event), case.rand(*event, low=0.3,
                                                                                                  high=2.0)),
            "step_size": eta, "z": case.randn(*shape)}


LANGEVIN_HINT = "x_{k+1} = x_k + eta * score(x_k) + sqrt(2 eta) * z, eta = step_size"


def _langevin(drift=lambda x, s, eta: eta * s(x), noise=lambda eta: math.sqrt(2 * eta), keep_x=True):
    def value(x, s, eta, z):
        return (x if keep_x else 0) + drift(x, s, eta) + noise(eta) * z
    return value


function_check(
    "09.langevin_step", "one step of Langevin dynamics, given the noise",
    solution=_langevin_step, inputs=_langevin_inputs, specs=LANGEVIN_SPECS, seed=9400, what="x_{k+1}",
    describe=["x", "step_size"],
    mistakes=[
        Slip("the noise scaled by eta instead of sqrt(2 eta)", f"the noise's variance is 2 eta, so its scale is "
             f"sqrt(2 eta): {LANGEVIN_HINT}", _langevin(noise=lambda eta: eta)),
        Slip("sqrt(eta) instead of sqrt(2 eta) as the noise's scale", f"with the drift eta * score the noise's "
             f"variance is 2 eta (the factor 2 makes p the stationary law): {LANGEVIN_HINT}",
             _langevin(noise=lambda eta: math.sqrt(eta))),
        Slip("2 eta instead of sqrt(2 eta) as the noise's scale", f"2 eta is the variance: {LANGEVIN_HINT}",
             _langevin(noise=lambda eta: 2 * eta)),
        Slip("the score with the wrong sign", f"the score points uphill, towards more probable points; the step "
             f"follows it: {LANGEVIN_HINT}", _langevin(drift=lambda x, s, eta: -eta * s(x))),
        Slip("the score not multiplied by the step size", LANGEVIN_HINT, _langevin(drift=lambda x, s, eta: s(x))),
        Slip("the score evaluated at the noised point (the step applied after the noise)", f"both the drift and the "
             f"noise start from x_k: {LANGEVIN_HINT}",
             lambda x, s, eta, z: x + eta * s(x + math.sqrt(2 * eta) * z) + math.sqrt(2 * eta) * z),
        Slip("the other convention, eta / 2 on the score with sqrt(eta) noise", f"this course's step of size eta "
             f"moves by eta * score: {LANGEVIN_HINT}",
             _langevin(drift=lambda x, s, eta: eta / 2 * s(x), noise=lambda eta: math.sqrt(eta))),
        Slip("the increment returned without x", LANGEVIN_HINT, _langevin(keep_x=False)),
    ])


# --------------------------------------------------------------------------------------------------
# 09.chamfer: the Chamfer distance, KAIST's definition
# --------------------------------------------------------------------------------------------------
CHAMFER_SPECS = [(40, 57, 2), (64, 33, 3), (25, 25, 2)]          # (N, M, D)


def _chamfer(x, y):
    """:func:`coursepkg.metrics.chamfer` (``reduction="sum"``, KAIST's)."""
    return metrics.chamfer(_64(x), _64(y)).to(x)


def _chamfer_inputs(case: Case, spec) -> dict:
    N, M, Dim = spec
    return {"x": case.randn(N, Dim), "y": case.randn(M, Dim, scale=1.3, shift=0.3)}


def _d2(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)                # (N, M)


def _directions(nearest=lambda d, dim: d.min(dim).values, dist=lambda d2: d2):
    """``(x to y, y to x)``: per point, ``nearest`` of ``dist`` of the squared distances to the other set."""
    def both(x, y):
        d = dist(_d2(x, y))
        return nearest(d, 1), nearest(d, 0)
    return both


def _chamfer_slip(combine, directions=None):
    def value(x, y):
        a, b = (directions or _directions())(x, y)
        return combine(a, b)
    return value


CHAMFER_HINT = ("d2 = squared distances (N, M); chamfer = d2.min(1).values.sum() + d2.min(0).values.sum(): every "
                "point's squared distance to its nearest neighbour in the other set, summed over both sets")

function_check(
    "09.chamfer", "the Chamfer distance between two point sets (KAIST's definition)",
    solution=_chamfer, inputs=_chamfer_inputs, specs=CHAMFER_SPECS, seed=9500, what="the Chamfer distance",
    describe=["x", "y"],
    shape_hints=[((N,), "sum over the points: the distance is one number") for N, _, _ in CHAMFER_SPECS]
    + [((N, M), "take each point's nearest neighbour (a min over the other set), then sum: one number")
       for N, M, _ in CHAMFER_SPECS],
    mistakes=[
        Slip("the distances not squared", f"KAIST's Chamfer distance adds squared distances: {CHAMFER_HINT}",
             _chamfer_slip(lambda a, b: a.sum() + b.sum(), _directions(dist=lambda d2: d2.sqrt()))),
        Slip("one direction only (from x to y)", f"the distance goes both ways, or a sampler that covers only part "
             f"of the data scores well: {CHAMFER_HINT}", _chamfer_slip(lambda a, b: a.sum())),
        Slip("one direction only (from y to x)", f"the distance goes both ways: {CHAMFER_HINT}",
             _chamfer_slip(lambda a, b: b.sum())),
        Slip("a mean over each set instead of the sum", f"KAIST's definition sums over the points (it grows with "
             f"their number): {CHAMFER_HINT}", _chamfer_slip(lambda a, b: a.mean() + b.mean())),
        Slip("the two directions averaged instead of added", CHAMFER_HINT, _chamfer_slip(lambda a, b: (a.sum()
                                                                                                       + b.sum()) / 2)),
        Slip("max instead of min (the farthest point instead of the nearest)", CHAMFER_HINT,
             _chamfer_slip(lambda a, b: a.sum() + b.sum(), _directions(nearest=lambda d, dim: d.max(dim).values))),
    ])
