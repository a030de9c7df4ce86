"""One training loop for every chapter: :func:`fit`.

::

    from coursepkg.config import budget
    from coursepkg.train import fit
    from coursepkg.vae import VAE

    model = VAE.mlp(784, (400,), 20)
    history = fit(model, x, steps=budget(quick=2_000, full=50_000), lr=1e-3, checkpoint="vae.pt")
    history.plot()

``fit`` minimises ``model.loss(batch)`` (a :class:`coursepkg.models.TrainableModel`; or any ``loss=``) with
Adam on minibatches of ``data``, shows a progress bar, stops with :class:`TrainingDiverged` when the loss
turns NaN or infinite, and returns the :class:`History` of every step. With ``checkpoint=path`` it saves the
model, the optimizer, every random generator, the step and the history to ``path`` as it goes, and a later
call with the same arguments (a fresh kernel, after a Colab disconnect) resumes from it: exactly the run that
would have happened without the interruption.

Budgets. ``steps`` (or ``epochs``) is a plain int; a notebook picks it by profile with
:func:`coursepkg.config.budget`, ``steps=budget(quick=2_000, full=50_000)``, the one way the course
chooses how much work to do.

Reproducibility. Everything random in a run flows from ``seed``: a fresh run calls
:func:`coursepkg.config.seed_everything` (the noise the loss draws, e.g. the VAE's ``eps``), and the
minibatches are drawn from a dedicated :class:`torch.Generator` seeded with ``seed`` (a new random
permutation of the data each epoch). The model's initial weights are the caller's: seed before building it.
"""

from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from coursepkg import _validate as V
from coursepkg import config

CHECKPOINT_VERSION = 1


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite. Raised *before* that step's update, so the model keeps the
    parameters of the last finite step (and the checkpoint on disk, if any, is untouched)."""


# --------------------------------------------------------------------------------------------------
# the history
# --------------------------------------------------------------------------------------------------
@dataclass
class History:
    """What :func:`fit` logged, one entry per step: ``step`` (0-based) and one list of floats per logged
    term (``loss`` first, then the other scalar entries of the loss's dict, e.g. ``recon`` and ``kl``).

    ``history["loss"]`` is a list; ``history.as_dict()`` a plain dict of lists (for pandas or JSON);
    :meth:`plot` draws the terms against the step, smoothed with a moving average.
    """

    step: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> list:
        if key == "step":
            return self.step
        if key not in self.values:
            raise KeyError(f"{key!r} was not logged; the history has {', '.join(self.keys())}")
        return self.values[key]

    def __len__(self) -> int:
        return len(self.step)

    def keys(self) -> list[str]:
        return ["step", *self.values]

    def as_dict(self) -> dict[str, list]:
        """``{"step": [...], "loss": [...], ...}``, copies of the lists."""
        return {"step": list(self.step), **{k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, list]) -> History:
        return cls(list(d["step"]), {k: list(v) for k, v in d.items() if k != "step"})

    def _append(self, step: int, names: list[str], values: list[float]) -> None:
        if not self.values:
            self.values = {k: [] for k in names}
        elif list(self.values) != names:
            raise ValueError(f"the loss's dict changed its entries at step {step}: logged {list(self.values)} "
                             f"so far, now {names}; return the same entries at every step")
        self.step.append(step)
        for k, v in zip(names, values, strict=True):
            self.values[k].append(v)

    def mean(self, key: str = "loss", last: int | None = None) -> float:
        """The mean of ``key`` over the ``last`` steps (all steps by default)."""
        vals = self[key][-last:] if last else self[key]
        if not vals:
            raise ValueError("the history is empty")
        return float(sum(vals) / len(vals))

    def plot(self, keys: str | list[str] | None = None, *, smooth: int | None = None, ax=None, logy: bool = False):
        """Plot ``keys`` (default: every logged term) against the step, as moving averages over ``smooth``
        steps (default: 1% of the run); returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        keys = list(self.values) if keys is None else [keys] if isinstance(keys, str) else list(keys)
        if ax is None:
            ax = plt.subplots()[1]
        w = smooth or max(1, len(self) // 100)
        for k in keys:
            v = np.asarray(self[k], dtype=float)
            if len(v) >= w:
                v = np.convolve(v, np.ones(w) / w, mode="valid")
            ax.plot(np.asarray(self.step[len(self.step) - len(v):]), v, label=k)
        ax.set(xlabel="step", ylabel="value" if len(keys) > 1 else keys[0],
               title=f"training ({w}-step moving average)" if w > 1 else "training")
        if logy:
            ax.set_yscale("log")
        ax.legend()
        return ax


# --------------------------------------------------------------------------------------------------
# minibatches
# --------------------------------------------------------------------------------------------------
class _Batches:
    """Minibatches of ``data``, driven by one dedicated generator, so that they depend on ``seed`` alone.

    ``data`` is a tensor ``(N, ...)`` or a tuple of tensors sharing ``N`` (sampled with the same rows):
    each epoch is a fresh random permutation cut into ``N // batch_size`` batches (the last, incomplete
    batch is dropped). ``batch_size=None`` (or ``>= N``) gives the whole data set every step. ``data`` may
    also be a sampler, ``data(batch_size, generator=g)``, called for a fresh batch every step (e.g.
    ``functools.partial(coursepkg.data.toy_2d, "two_moons")``).
    """

    def __init__(self, data, batch_size: int | None, seed: int, device: torch.device):
        V.positive_int("batch_size", batch_size, none="the whole data set")
        self.device, self.batch_size = device, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: torch.Tensor | None = None
        self.pos = 0
        if callable(data) and not isinstance(data, torch.Tensor):
            if batch_size is None:
                raise ValueError("a sampler data=f(n, generator=g) needs a batch_size")
            self.sampler, self.tensors, self.n = data, (), None
            return
        tensors = (data,) if isinstance(data, torch.Tensor) else data
        if not isinstance(tensors, (tuple, list)) or not tensors or \
                not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
            raise TypeError("data must be a tensor (N, ...), a tuple of tensors sharing their first dimension, "
                            f"or a sampler f(n, generator=g); got {type(data).__name__}")
        if len({t.shape[0] for t in tensors}) != 1:
            raise ValueError(f"the tensors of data must share their first dimension, got shapes "
                             f"{[list(t.shape) for t in tensors]}")
        self.sampler, self.tensors, self.n = None, tuple(t.to(device) for t in tensors), tensors[0].shape[0]

    @property
    def per_epoch(self) -> int:
        if self.n is None:
            raise ValueError("epochs= needs a data set; with a sampler for data, give steps=")
        return 1 if self.batch_size is None or self.batch_size >= self.n else self.n // self.batch_size

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.sampler is not None:
            out = self.sampler(self.batch_size, generator=self.generator)
            out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            return tuple(t.to(self.device) for t in out)
        if self.batch_size is None or self.batch_size >= self.n:
            return self.tensors
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.perm[self.pos:self.pos + self.batch_size].to(self.device)
        self.pos += self.batch_size
        return tuple(t[idx] for t in self.tensors)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos, "n": self.n,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], state["pos"]


# --------------------------------------------------------------------------------------------------
# random states, checkpoints
# --------------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, key.tolist(), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def _save(path: Path, **state) -> None:
    """Write atomically: a disconnect while writing leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state, "rng": _rng_state()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The contents of a :func:`fit` checkpoint: ``model`` and ``optimizer`` state dicts, ``step``,
    ``history`` (a dict of lists), ``seed``, the random states. Loaded on the CPU, with
    ``weights_only=True`` (no code in the file is run)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a checkpoint written by coursepkg.train.fit")
    return state


# --------------------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------------------
def _takes_step(fn) -> bool:
    try:
        p = inspect.signature(fn).parameters.get("step")
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)


def _unpack(out, step: int) -> tuple[torch.Tensor, dict]:
    """``(loss, {name: scalar})`` from what the loss function returned: a scalar or a dict with ``"loss"``."""
    logs = {"loss": out} if isinstance(out, torch.Tensor) else out
    if not isinstance(logs, Mapping) or "loss" not in logs:
        got = f"a dict with keys {list(logs)}" if isinstance(logs, Mapping) else type(out).__name__
        raise TypeError(f"the loss function must return a scalar tensor or a dict with a 'loss' entry; got {got}")
    loss = logs["loss"]
    for k, v in logs.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, torch.Tensor) and v.numel() == 1
        if not ok:
            shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"entry {k!r} of the loss must be a scalar (did you forget a .mean() over the batch?); "
                             f"got {shape} at step {step}")
    if not (isinstance(loss, torch.Tensor) and loss.is_floating_point()):
        raise TypeError(f"the loss must be a floating-point tensor, got {type(loss).__name__} at step {step}")
    if "loss" != next(iter(logs)):
        logs = {"loss": loss, **{k: v for k, v in logs.items() if k != "loss"}}
    return loss.reshape(()), logs


def _make_optimizer(optimizer, model: nn.Module, lr: float | None) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError("lr is set on the optimizer you built; pass lr only with an optimizer class")
        mine = {id(p) for p in model.parameters()}
        if not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("the optimizer does not update any parameter of the model")
        return optimizer
    if not callable(optimizer):
        raise TypeError(f"optimizer must be an optimizer class (torch.optim.Adam), a factory "
                        f"f(params, lr=...) or an Optimizer; got {type(optimizer).__name__}")
    lr = 1e-3 if lr is None else lr
    V.number("lr", lr, positive=True)
    return optimizer(model.parameters(), lr=lr)


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def fit(model: nn.Module, data, loss: Callable | None = None, *, steps: int | None = None,
        epochs: int | None = None, batch_size: int | None = 128, lr: float | None = None,
        optimizer=torch.optim.Adam, schedule: Callable | None = None, clip_grad_norm: float | None = None,
        seed: int = 0, checkpoint: str | os.PathLike | None = None, resume: bool = True,
        checkpoint_every: int | None = None, log_every: int | None = None, progress: bool = True,
        device: str | torch.device | None = None, callback: Callable | None = None) -> History:
    """Train ``model`` by minimising ``loss`` on minibatches of ``data``; return the :class:`History`.

    Arguments:

    - ``model``: an ``nn.Module``, moved to ``device`` (default :func:`coursepkg.config.device`) in place.
    - ``data``: a tensor ``(N, ...)``, a tuple of tensors sharing ``N``, or a sampler
      ``data(batch_size, generator=g)``. Each epoch is a new random permutation (from a generator of its
      own, seeded with ``seed``), cut into ``N // batch_size`` batches; ``batch_size=None``: full batch.
    - ``loss``: called with the batch's tensors, ``loss(x)`` or ``loss(x, y)``, and also with ``step=``
      (0-based) when it has a parameter named ``step`` (e.g. for KL annealing:
      ``loss=lambda x, step: model.loss(x, beta=min(1, step / 1000))``). It returns a scalar tensor, or a
      dict whose ``"loss"`` entry is minimised and whose other scalar entries are logged. Default:
      ``model.loss`` (a :class:`coursepkg.models.TrainableModel`). Any objective works: amortized inference
      (chapter 03) trains an encoder on the ELBO of a fixed model,
      ``fit(encoder, x, lambda xb: -elbo(xb, model, encoder.q(xb)).estimate.mean(), ...)``; only the
      parameters of ``model`` (here the encoder) are updated.
    - ``steps`` or ``epochs`` (exactly one): the length of the whole run, counted from its start (a
      resumed run goes on to the same ``steps``). Use ``steps=budget(quick=..., full=...)``.
    - ``lr`` (default ``1e-3``) and ``optimizer``: a class or factory called as
      ``optimizer(model.parameters(), lr=lr)`` (``functools.partial(torch.optim.AdamW, weight_decay=0.01)``),
      or an ``Optimizer`` already built (then without ``lr``). ``schedule``: ``schedule(optimizer)`` returns
      an LR scheduler, stepped once per step. ``clip_grad_norm``: clip the gradients' global norm.
    - ``seed``: seeds everything at the start of a fresh run (:func:`coursepkg.config.seed_everything`)
      and the batch order; a fixed seed gives the same run, step for step.
    - ``checkpoint``: a file path. Saved every ``checkpoint_every`` steps (default: 5% of the run) and at
      the end; holds the model, optimizer and scheduler states, every random state (torch's CPU and CUDA
      generators, NumPy's, Python's, the batch generator and the current permutation), the step and the
      history. With ``resume=True`` and the file present, training continues from it: the result is the
      same, bit for bit on a CPU, as one uninterrupted run (the optimizer's state, its lr included, comes
      from the file). A checkpoint at or past ``steps`` is loaded and returned without training.
      ``resume=False`` starts over (and overwrites the file). A file made with another ``seed``,
      ``batch_size`` or data size is refused (``ValueError``).
    - ``progress``: a ``tqdm.auto`` progress bar showing the mean of each logged term over the last
      ``log_every`` steps (default: 1% of the run). ``callback(step, history)`` is called every
      ``log_every`` steps with the number of steps done; returning ``True`` stops training.

    Raises :class:`TrainingDiverged` (a ``FloatingPointError``) when the loss is NaN or infinite, naming the
    step and the last finite loss, before updating the parameters with it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    loss_fn = getattr(model, "loss", None) if loss is None else loss
    if not callable(loss_fn):
        raise TypeError(f"{type(model).__name__} has no loss method; pass loss=f, f(batch) -> scalar or dict")
    if steps is not None and epochs is not None or steps is None and epochs is None:
        raise ValueError("give exactly one of steps and epochs")
    V.seed_int(seed)
    if clip_grad_norm is not None:
        V.number("clip_grad_norm", clip_grad_norm, positive=True)
    dev = torch.device(device) if device is not None else config.device()
    model.to(dev)
    batches = _Batches(data, batch_size, int(seed), dev)
    total = (V.positive_int("steps", steps) if steps is not None
             else V.positive_int("epochs", epochs) * batches.per_epoch)
    opt = _make_optimizer(optimizer, model, lr)
    sched = schedule(opt) if schedule is not None else None
    log_every = max(1, total // 100) if log_every is None else V.positive_int("log_every", log_every)
    checkpoint_every = (max(1, total // 20) if checkpoint_every is None
                        else V.positive_int("checkpoint_every", checkpoint_every))
    takes_step = _takes_step(loss_fn)
    path = Path(checkpoint) if checkpoint is not None else None

    history, step = History(), 0
    if path is not None and resume and path.exists():
        state = load_checkpoint(path)
        for name, now in (("seed", seed), ("batch_size", batch_size)):
            if state[name] != now:
                raise ValueError(f"{path} was made with {name}={state[name]!r}, not {now!r}: resuming would not "
                                 "continue that run. Pass the same value, or resume=False to start over.")
        if state["batches"]["n"] != batches.n:
            raise ValueError(f"{path} was made on a data set of {state['batches']['n']} rows, not {batches.n}; "
                             "pass resume=False to start over")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit this model: {err}") from None
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("schedule") is not None:
            sched.load_state_dict(state["schedule"])
        batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"])
        history, step = History.from_dict(state["history"]), state["step"]
    else:
        config.seed_everything(int(seed))

    def save() -> None:
        if path is not None:
            _save(path, model=model.state_dict(), optimizer=opt.state_dict(),
                  schedule=sched.state_dict() if sched is not None else None, batches=batches.state_dict(),
                  step=step, history=history.as_dict(), seed=int(seed), batch_size=batch_size)

    if step >= total:
        return history
    was_training = model.training
    model.train()
    bar = tqdm(total=total, initial=step, desc="fit", dynamic_ncols=True) if progress else None
    try:
        while step < total:
            batch = batches.next()
            out = loss_fn(*batch, step=step) if takes_step else loss_fn(*batch)
            loss_t, logs = _unpack(out, step)
            values = torch.stack([torch.as_tensor(v).detach().to(loss_t).reshape(()) for v in logs.values()]).tolist()
            if not math.isfinite(values[0]):
                last = history.values["loss"][-1] if history.values else None
                since = f"the last finite loss was {last:.6g} at step {step - 1}" if last is not None else \
                    "no step had a finite loss yet"
                raise TrainingDiverged(f"the loss became {values[0]} at step {step} ({since}); the model keeps the "
                                       "parameters of the last finite step. Lower lr, set clip_grad_norm, or check "
                                       "the loss for log(0) or a division by zero.")
            if not loss_t.requires_grad:
                raise ValueError("the loss does not depend on any trainable parameter (requires_grad is False)")
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            history._append(step, list(logs), values)
            step += 1
            stop = False
            if step % log_every == 0 or step == total:
                if bar is not None:
                    bar.set_postfix({k: f"{sum(v[-log_every:]) / len(v[-log_every:]):.4g}"
                                     for k, v in history.values.items()}, refresh=False)
                stop = bool(callback(step, history)) if callback is not None else False
            if bar is not None:
                bar.update(1)
            if step % checkpoint_every == 0 or step == total or stop:
                save()
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return history
