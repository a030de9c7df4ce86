r"""Conditioning and guidance (chapter 10): class-conditional diffusion, classifier guidance and
classifier-free guidance, as transforms of a model's output that chapter 09's samplers take unchanged.

A *conditional* network predicts the noise given a class, ``net(xt, t, y) -> eps``
(:class:`coursepkg.nn.TimeMLP` and :class:`coursepkg.nn.UNet` with ``num_classes``); the label ``-1``
(:data:`NULL`) is the null token, "no label". Training is the simplified loss with the label replaced by
the null token at rate ``p_uncond`` (:func:`drop_labels`, :func:`conditional_loss`, :class:`ConditionalDDPM`),
so that one network learns both the conditional and the unconditional model.

Guidance changes what the sampler is given, not the sampler. Both transforms return a model
``guided(xt, t) -> eps`` that :func:`coursepkg.diffusion.sample` runs with any DDPM or DDIM sampler:

- :func:`classifier_guidance` (Dhariwal and Nichol 2021; lecture 004): the score of
  :math:`q(x_t)\,p(y \mid x_t)^\gamma`, with the classifier's gradient turned into a noise by the factor
  :math:`-\sqrt{1 - \bar\alpha_t}` (Eq. ``guided-eps``),

  .. math:: \hat\varepsilon = \varepsilon_\theta(x_t, t) - \gamma\,\sqrt{1 - \bar\alpha_t}\,
            \nabla_{x_t}\log p_\phi(y \mid x_t, t).

- :func:`classifier_free_guidance` (Ho and Salimans 2022): with :math:`\varepsilon_c` and
  :math:`\varepsilon_u` the conditional and the unconditional predictions of one network,

  .. math:: \hat\varepsilon = \varepsilon_u + s\,(\varepsilon_c - \varepsilon_u) \qquad (\text{Eq. cfg-eps}).

  **One convention.** The scale ``s`` here is the one of the implicit classifier: ``s = 0`` is the unconditional
  model, ``s = 1`` the conditional one, and ``s`` plays the part of classifier guidance's :math:`\gamma`
  (diffusers calls it ``guidance_scale``). Ho and Salimans write :math:`(1 + w)\,\varepsilon_c - w\,\varepsilon_u`,
  so their ``w`` is ``s - 1``: their ``w = 0`` is our ``s = 1``, the plain conditional model.

The noise-aware classifier :math:`p_\phi(y \mid x_t, t)` is any network ``(xt, t) -> logits`` trained on noised
data (:class:`NoisyClassifier`, :func:`classifier_loss`); on a labelled Gaussian mixture the exact one is
:class:`coursepkg.diffusion.exact.ExactClassifier`, so that classifier guidance can be run with every quantity
exact and compared with the tilted distribution :math:`p(x)\,p(y \mid x)^\gamma` it is meant to sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coursepkg import _validate as V
from coursepkg import diffusion as D
from coursepkg.diffusion.loss import _eps, _randn
from coursepkg.nn import NULL_CLASS, check_labels

NULL = NULL_CLASS
"""The label of "no class", ``-1``: the null token a conditional network is trained with and samples with
when it is asked for its unconditional prediction."""


def _num_classes(module) -> int | None:
    k = getattr(module, "num_classes", None)
    return None if k is None else int(k)


def _scale(name: str, value) -> float:
    return V.number(name, value, nonnegative=True)


def _steps(schedule: D.Schedule, x0: torch.Tensor, t, generator) -> torch.Tensor:
    if t is not None:
        return schedule.check_t(t, x0).to(x0.device)
    dev = x0.device if generator is None else generator.device
    return torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator, device=dev).to(x0.device)


# --------------------------------------------------------------------------------------------------
# Training: label dropout, the conditional loss, the noise-aware classifier
# --------------------------------------------------------------------------------------------------
def drop_labels(y: torch.Tensor, p_uncond: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The labels of one training batch with each replaced by :data:`NULL` independently with probability
    ``p_uncond`` (Eq. ``cfg-label-dropout``): the network sees "no label" on that fraction of its examples and
    learns the unconditional model there. A new tensor; ``y`` is not modified. Training only: sampling never
    drops labels."""
    p = V.number("p_uncond", p_uncond, nonnegative=True)
    if p > 1:
        raise ValueError(f"p_uncond is a probability, in [0, 1]; got {p}")
    y = V.tensor("y", y, min_dim=1)
    if y.is_floating_point() or y.dim() != 1:
        raise TypeError(f"y must be a 1-D integer tensor of labels, got {y.dtype} of shape {tuple(y.shape)}")
    dev = y.device if generator is None else generator.device
    drop = torch.rand(y.shape, generator=generator, device=dev).to(y.device) < p
    return torch.where(drop, torch.full_like(y, NULL), y)


def conditional_loss(net, x0: torch.Tensor, y: torch.Tensor, schedule: D.Schedule, *, p_uncond: float = 0.0,
                     t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The simplified loss conditioned on the label, with label dropout (Eq. ``cfg-loss``):
    :math:`\mathbb E\,\|\varepsilon - \varepsilon_\theta(x_t, t, \tilde y)\|^2`, :math:`\tilde y` the label
    replaced by :data:`NULL` with probability ``p_uncond``. ``net(xt, t, y) -> eps``; ``t`` (uniform on ``1..T``)
    and ``eps`` may be fixed. ``p_uncond = 0`` trains the conditional model alone."""
    V.function("net", net)
    x0 = V.tensor("x0", x0, floating=True, min_dim=2)
    k = _num_classes(net)
    y = check_labels(y, x0.shape[0], k if k is not None else 1 << 30, like=x0, null=False)
    t = _steps(schedule, x0, t, generator)
    eps = _randn(x0, generator) if eps is None else eps
    xt = D.q_sample(x0, t, eps, schedule)
    pred = _eps(lambda a, b: net(a, b, drop_labels(y, p_uncond, generator=generator)), xt, t)
    return ((eps - pred) ** 2).mean()


class ConditionalDDPM(nn.Module):
    """A conditional noise predictor, its schedule and its label-dropout rate, trainable with
    :func:`coursepkg.train.fit` on ``(x, y)`` pairs: ``fit(ConditionalDDPM(net, schedule, p_uncond=0.1), (x, y),
    ...)`` minimises :func:`conditional_loss`. Calling it is calling the network, ``model(xt, t, y)``, with
    ``y=None`` (or :data:`NULL` rows) for the unconditional prediction. ``net`` must have ``num_classes``."""

    def __init__(self, net: nn.Module, schedule: D.Schedule, *, p_uncond: float = 0.1):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        if _num_classes(net) is None:
            raise ValueError(f"net must be conditional (built with num_classes), got {type(net).__name__} without")
        if not isinstance(schedule, D.Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        self.net, self.schedule = net, schedule
        self.num_classes = net.num_classes
        self.p_uncond = V.number("p_uncond", p_uncond, nonnegative=True)
        if self.p_uncond > 1:
            raise ValueError(f"p_uncond is a probability, in [0, 1]; got {p_uncond}")

    def forward(self, xt: torch.Tensor, t, y=None) -> torch.Tensor:
        return self.net(xt, t, y)

    def loss(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return conditional_loss(self.net, x0, y, self.schedule, p_uncond=self.p_uncond)


def classifier_loss(classifier, x0: torch.Tensor, y: torch.Tensor, schedule: D.Schedule, *,
                    t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The noise-aware classifier's loss (Eq. ``noisy-classifier-loss``): the cross-entropy of
    ``classifier(x_t, t)`` (logits) for the label of ``x_0``, with :math:`x_t \sim q(x_t \mid x_0)` and ``t``
    uniform on ``1..T``, averaged over the batch. A classifier trained on clean data alone knows nothing of
    :math:`p(y \mid x_t)` at large ``t``."""
    V.function("classifier", classifier)
    x0 = V.tensor("x0", x0, floating=True, min_dim=2)
    t = _steps(schedule, x0, t, generator)
    eps = _randn(x0, generator) if eps is None else eps
    logits = _logits(classifier, D.q_sample(x0, t, eps, schedule), t)
    y = check_labels(y, x0.shape[0], logits.shape[1], like=x0, null=False)
    return F.cross_entropy(logits, y)


def _logits(classifier, xt: torch.Tensor, t) -> torch.Tensor:
    out = classifier(xt, t)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != xt.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"classifier(xt, t) must return logits (N, num_classes) with N = {xt.shape[0]}, got {got}")
    k = _num_classes(classifier)
    if k is not None and out.shape[1] != k:
        raise ValueError(f"classifier returned {out.shape[1]} logits but says it has num_classes = {k}")
    return out


class NoisyClassifier(nn.Module):
    """A classifier of noised data :math:`p_\\phi(y \\mid x_t, t)` with its schedule, trainable with
    :func:`coursepkg.train.fit` on ``(x, y)`` pairs (:func:`classifier_loss`). ``net(xt, t) -> logits``, e.g.
    ``TimeMLP(dim, out_dim=num_classes)``; calling the module returns the logits."""

    def __init__(self, net: nn.Module, schedule: D.Schedule, num_classes: int):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        if not isinstance(schedule, D.Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        self.net, self.schedule = net, schedule
        self.num_classes = V.positive_int("num_classes", num_classes)
        if getattr(net, "out_dim", num_classes) != num_classes:
            raise ValueError(f"net has {net.out_dim} outputs, not num_classes = {num_classes}")

    def forward(self, xt: torch.Tensor, t) -> torch.Tensor:
        return self.net(xt, t)

    def loss(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return classifier_loss(self, x0, y, self.schedule)


# --------------------------------------------------------------------------------------------------
# Guidance: transforms of a model's output
# --------------------------------------------------------------------------------------------------
def guided_eps(eps: torch.Tensor, grad_log_py: torch.Tensor, t, scale: float, schedule: D.Schedule) -> torch.Tensor:
    r"""Classifier guidance on a noise prediction (Eq. ``guided-eps``):
    :math:`\varepsilon - \gamma\sqrt{1 - \bar\alpha_t}\,\nabla_{x_t}\log p(y \mid x_t)`. A noise is minus
    :math:`\sqrt{1 - \bar\alpha_t}` times a score (:func:`~coursepkg.diffusion.eps_from_score`), so adding
    :math:`\gamma\nabla\log p(y \mid x_t)` to the score subtracts this from the noise."""
    eps, grad = V.tensor("eps", eps, floating=True, min_dim=1), V.tensor("grad_log_py", grad_log_py, floating=True)
    if grad.shape != eps.shape:
        raise ValueError(f"grad_log_py must be shaped like eps {tuple(eps.shape)}, got {tuple(grad.shape)}")
    gamma = _scale("scale", scale)
    return eps - gamma * (1 - schedule.at(schedule.alpha_bar, t, eps)).sqrt() * grad


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    r"""The classifier-free combination (Eq. ``cfg-eps``) :math:`\varepsilon_u + s(\varepsilon_c - \varepsilon_u)`:
    ``scale = 1`` is the conditional prediction, ``0`` the unconditional one; Ho and Salimans' ``w`` is
    ``scale - 1``."""
    eps_cond = V.tensor("eps_cond", eps_cond, floating=True)
    eps_uncond = V.tensor("eps_uncond", eps_uncond, floating=True)
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(f"eps_cond {tuple(eps_cond.shape)} and eps_uncond {tuple(eps_uncond.shape)} must have one "
                         "shape")
    s = _scale("scale", scale)
    return eps_uncond + s * (eps_cond - eps_uncond)


class _Guided:
    """A guided model ``(xt, t) -> eps`` for :func:`coursepkg.diffusion.sample`; ``y`` one label or one per row."""

    def __init__(self, y, scale: float, num_classes: int | None):
        self.scale = _scale("scale", scale)
        if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
            raise TypeError(f"y must be an int or a tensor (N,) of class labels, got {type(y).__name__}")
        self.y, self.num_classes = y, num_classes

    def labels(self, xt: torch.Tensor) -> torch.Tensor:
        return check_labels(self.y, xt.shape[0], self.num_classes or 1 << 30, like=xt, null=False)

    def __repr__(self) -> str:
        y = self.y if isinstance(self.y, int) else f"tensor of {self.y.numel()} labels"
        return f"{type(self).__name__}(scale={self.scale}, y={y})"


class ClassifierGuidance(_Guided):
    """See :func:`classifier_guidance`."""

    def __init__(self, model, classifier, y, scale: float, schedule: D.Schedule):
        V.function("model", model)
        V.function("classifier", classifier)
        if not isinstance(schedule, D.Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        k_model, k_clf = _num_classes(model), _num_classes(classifier)
        if k_model is not None and k_clf is not None and k_model != k_clf:
            raise ValueError(f"the classifier has {k_clf} classes but the model has {k_model}: they must label the "
                             "same classes")
        super().__init__(y, scale, k_clf if k_clf is not None else k_model)
        self.model, self.classifier, self.schedule = model, classifier, schedule
        self.conditional = k_model is not None

    def grad_log_prob(self, xt: torch.Tensor, t) -> torch.Tensor:
        r""":math:`\nabla_{x_t}\log p_\phi(y \mid x_t, t)`, by autograd with respect to ``xt`` (not the
        classifier's parameters, which are left without gradients)."""
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            logits = _logits(self.classifier, x, t)
            y = check_labels(self.y, x.shape[0], logits.shape[1], like=x, null=False)
            log_py = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_py, x)
        return grad

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        y = self.labels(xt)
        eps = self.model(xt, t, y) if self.conditional else self.model(xt, t)
        if self.scale == 0:
            return eps
        return guided_eps(eps, self.grad_log_prob(xt, t), t, self.scale, self.schedule)


def classifier_guidance(model, classifier, y, scale: float, schedule: D.Schedule) -> ClassifierGuidance:
    r"""The classifier-guided model (Eq. ``guided-eps``): ``guided(xt, t)`` returns
    :math:`\varepsilon_\theta(x_t, t) - \gamma\sqrt{1 - \bar\alpha_t}\,\nabla_{x_t}\log p_\phi(y \mid x_t, t)`,
    the noise whose score is :math:`\nabla\log q(x_t) + \gamma\nabla\log p(y \mid x_t)`.

    - ``model(xt, t) -> eps``, unconditional; or a conditional model (one with ``num_classes``), then called as
      ``model(xt, t, y)``, which classifier guidance sharpens further.
    - ``classifier(xt, t) -> logits (N, K)`` (or log-probabilities: they are normalised again), noise-aware.
    - ``y``: the class to guide to, one int or a tensor ``(N,)``; ``scale`` :math:`\gamma \ge 0` (``1``: the
      conditional distribution, exactly so with exact scores; ``0``: the model unchanged).

    Plug the result into :func:`coursepkg.diffusion.sample` with any sampler."""
    return ClassifierGuidance(model, classifier, y, scale, schedule)


class ClassifierFreeGuidance(_Guided):
    """See :func:`classifier_free_guidance`."""

    def __init__(self, model, y, scale: float):
        V.function("model", model)
        k = _num_classes(model)
        if k is None:
            raise ValueError("classifier-free guidance needs a conditional model (one with num_classes, trained with "
                             "label dropout)")
        super().__init__(y, scale, k)
        self.model = model

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        y = self.labels(xt)
        eps_c = self.model(xt, t, y)
        if self.scale == 1:
            return eps_c
        eps_u = self.model(xt, t, torch.full_like(y, NULL))
        return cfg_combine(eps_c, eps_u, self.scale)


def classifier_free_guidance(model, y, scale: float) -> ClassifierFreeGuidance:
    r"""The classifier-free guided model (Eq. ``cfg-eps``): ``guided(xt, t)`` returns
    :math:`\varepsilon_u + s(\varepsilon_c - \varepsilon_u)` with :math:`\varepsilon_c = \varepsilon_\theta(x_t,
    t, y)` and :math:`\varepsilon_u = \varepsilon_\theta(x_t, t, \varnothing)` from one conditional ``model``
    trained with label dropout. ``scale`` :math:`s \ge 0`: ``0`` unconditional, ``1`` conditional, more is
    sharper; Ho and Salimans' :math:`w = s - 1`. Two network calls a step (one when ``scale == 1``)."""
    return ClassifierFreeGuidance(model, y, scale)


def implicit_classifier_grad(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, t, schedule: D.Schedule) -> torch.Tensor:
    r"""The gradient of the classifier that classifier-free guidance implies (Eq. ``cfg-implicit-classifier``):
    :math:`\nabla\log p(y \mid x_t) = \nabla\log q(x_t \mid y) - \nabla\log q(x_t)
    = -(\varepsilon_c - \varepsilon_u)/\sqrt{1 - \bar\alpha_t}`."""
    eps_cond = V.tensor("eps_cond", eps_cond, floating=True, min_dim=1)
    eps_uncond = V.tensor("eps_uncond", eps_uncond, floating=True, min_dim=1)
    return -(eps_cond - eps_uncond) / (1 - schedule.at(schedule.alpha_bar, t, eps_cond)).sqrt()


__all__ = ["NULL", "drop_labels", "conditional_loss", "ConditionalDDPM", "classifier_loss", "NoisyClassifier",
           "guided_eps", "cfg_combine", "ClassifierGuidance", "classifier_guidance", "ClassifierFreeGuidance",
           "classifier_free_guidance", "implicit_classifier_grad"]
