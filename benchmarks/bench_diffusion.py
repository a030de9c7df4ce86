"""Chapter 08's diffusion module: speed against diffusers, and the exact ELBO of the optimal DDPM.

    .venv/bin/python benchmarks/bench_diffusion.py [--repeats 5] [--n 2000] [--full]

Chapter 09's part (tables 4-6) trains one network on the KAIST swiss roll and is quick by default
(``--full``: more training steps and samples). The last line sums the run up as ``name=value`` pairs.

Six tables, from one run:

1. **Forward process against diffusers** (when installed, ``pip install -e .[dev]``): ``q_sample`` against
   ``DDPMScheduler.add_noise`` on a batch of 32x32 RGB images, one timestep per row, float32 (best of
   ``--repeats``): the two times, their ratio (diffusers / coursepkg: above 1 means faster) and the largest
   difference of the noised images.
2. **The exact ELBO of the optimal model** (``exact.optimal_elbo``, Gauss-Hermite quadrature) on the 1-D
   mixture of chapter 08, for each schedule, T in {10, 100, 1000} and both reverse variances: the gap
   ``-ELBO - (-E log q(x_0))`` in nats (>= 0: the bound), the time of the exact computation and the Monte
   Carlo ELBO (``loss.elbo``) on ``--n`` points, which must agree within its error.
3. **The two decompositions' variances** (``loss.elbo`` against ``loss.elbo_consistency``, the optimal model,
   ``--n`` points): per term (the median over t of the variance ratio), for the one-random-step estimator a
   training loop uses, and for the sum over a whole trajectory.
4. **Training throughput**: :func:`coursepkg.train.fit` on :class:`~coursepkg.diffusion.DDPM` against a plain
   PyTorch loop (same network, optimiser, batches and loss): steps/s and their ratio (about 1: ``fit`` adds
   nothing).
5. **Sampling throughput**: :func:`coursepkg.diffusion.sample` with :class:`~coursepkg.diffusion.DDPMSampler`
   against diffusers' ``DDPMScheduler`` loop with the same network and noise (ratio >= 1 means no slower),
   and the largest difference of the samples.
6. **Quality on the swiss roll** (the chapter's bars): the KAIST Chamfer distance of 2 000 samples against
   2 000 data points and its noise floor (two draws of the data), the sliced Wasserstein distance over its
   floor, DDIM with 50 steps against the 1000-step ancestral sampler, and the time of training plus sampling.
"""

from __future__ import annotations

import argparse
import time

import torch

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg.diffusion import exact as E
from coursepkg.probability import mean_and_stderr

F64 = torch.float64
DATA = G.GMM(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-1.0], [1.5]], dtype=F64),
             torch.tensor([[[0.05]], [[0.2]]], dtype=F64))


def schedule(name: str, T: int) -> D.Schedule:
    """Ho et al.'s linear and quadratic ranges are meant for T = 1000: scale them by 1000 / T (Nichol and
    Dhariwal 2021), capping beta at 0.5 so that T = 10 stays a valid schedule."""
    if name in ("linear", "quadratic"):
        return D.Schedule.named(name, T, beta_start=min(0.1 / T, 0.5), beta_end=min(20 / T, 0.5))
    return D.Schedule.named(name, T)


def best(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def against_diffusers(repeats: int) -> None:
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        print("1. diffusers is not installed (pip install -e '.[dev]'): table skipped\n")
        return
    print("1. q_sample against diffusers' DDPMScheduler.add_noise, float32, (N, 3, 32, 32), one t per row")
    print(f"{'N':>6} {'diffusers s':>12} {'coursepkg s':>12} {'ratio':>7} {'max |diff|':>11}")
    ours = D.Schedule.named("linear", 1000)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    for n in (256, 2048):
        x0, eps = torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)
        k = torch.randint(0, 1000, (n,), generator=g)       # diffusers' timestep k is the book's t = k + 1
        a = theirs.add_noise(x0, eps, k)
        b = D.q_sample(x0, k + 1, eps, ours)
        t_d = best(lambda: theirs.add_noise(x0, eps, k), repeats)
        t_c = best(lambda: D.q_sample(x0, k + 1, eps, ours), repeats)
        print(f"{n:>6} {t_d:>12.5f} {t_c:>12.5f} {t_d / t_c:>7.2f} {float((a - b).abs().max()):>11.2e}")
    print()


def exact_elbo(n: int) -> None:
    print("2. The optimal DDPM's ELBO on the 1-D mixture: gap to the true log-likelihood, nats per point")
    print(f"{'schedule':>10} {'T':>5} {'variance':>10} {'exact gap':>10} {'exact s':>8} {'MC gap':>17} {'MC s':>7}")
    target = float(E.expected_log_likelihood(DATA))
    g = torch.Generator().manual_seed(1)
    x0 = DATA.sample(n, generator=g).x
    for name in ("linear", "cosine", "quadratic"):
        for T in (10, 100, 1000):
            s = schedule(name, T)
            model = E.OptimalDenoiser(DATA, s)
            for variance in D.VARIANCES:
                t0 = time.perf_counter()
                gap = float(E.optimal_elbo(DATA, s, variance=variance).total[0]) + target
                t_exact = time.perf_counter() - t0
                mc_s = "-"
                mc = "-"
                if T <= 100:
                    t0 = time.perf_counter()
                    est = mean_and_stderr(D.elbo(model, x0, s, variance=variance, generator=g).total)
                    mc_s = f"{time.perf_counter() - t0:.2f}"
                    mc = f"{float(est.estimate) + target:.4f} ± {float(est.stderr):.4f}"
                print(f"{name:>10} {T:>5} {variance:>10} {gap:>10.4f} {t_exact:>8.3f} {mc:>17} {mc_s:>7}")
    print()


def variances(n: int) -> None:
    print("3. Variance of the consistency form / variance of the L_0 + sum L_{t-1} + L_T form (cosine, optimal model)")
    print(f"{'T':>5} {'variance':>10} {'per term (median)':>18} {'one random t':>13} {'whole trajectory':>17}")
    g = torch.Generator().manual_seed(2)
    for T in (10, 100, 1000):
        s = schedule("cosine", T)
        model = E.OptimalDenoiser(DATA, s)
        x0 = DATA.sample(n if T < 1000 else n // 2, generator=g).x
        for variance in D.VARIANCES:
            a = D.elbo(model, x0, s, variance=variance, generator=g)
            b = D.elbo_consistency(model, x0, s, variance=variance, generator=g)
            per_term = float((b.terms.var(0) / a.terms.var(0))[1:-1].median())   # the L_{t-1}, t = 2..T
            one_t = float(b.one_step_variance() / a.one_step_variance())
            whole = float(b.total.var() / a.total.var())
            print(f"{T:>5} {variance:>10} {per_term:>18.1f} {one_t:>13.1f} {whole:>17.2f}")
    print()


ROLL = {"hidden": (128, 128, 128), "batch": 512, "lr": 2e-3, "steps": {False: 3000, True: 20000}}


def _roll_model(seed: int = 0):
    from coursepkg.nn import TimeMLP
    torch.manual_seed(seed)
    return D.DDPM(TimeMLP(2, hidden=ROLL["hidden"]), D.Schedule.named("linear", 1000))


def training_throughput(summary: dict, n_steps: int = 300, repeats: int = 2) -> None:
    from coursepkg import data
    from coursepkg.train import fit
    print(f"4. Training throughput, TimeMLP{ROLL['hidden']} on the swiss roll, batch {ROLL['batch']}, Adam "
          f"(best of {repeats})")
    x = data.kaist_swiss_roll(20_000, seed=0)

    def with_fit():
        fit(_roll_model(), x, steps=n_steps, batch_size=ROLL["batch"], lr=ROLL["lr"], progress=False)

    def plain_loop():
        model = _roll_model()
        opt = torch.optim.Adam(model.parameters(), lr=ROLL["lr"])
        g = torch.Generator().manual_seed(0)
        for _ in range(n_steps):
            batch = x[torch.randint(0, x.shape[0], (ROLL["batch"],), generator=g)]
            t = torch.randint(1, 1001, (batch.shape[0],), generator=g)
            eps = torch.randn(batch.shape, generator=g)
            xt = D.q_sample(batch, t, eps, model.schedule)
            loss = ((model.net(xt, t) - eps) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_fit, t_plain = [], []
    for _ in range(repeats):                          # interleaved, so that both see the same machine
        t_plain.append(best(plain_loop, 1))
        t_fit.append(best(with_fit, 1))
    t_fit, t_plain = min(t_fit), min(t_plain)
    print(f"{'plain steps/s':>14} {'fit steps/s':>12} {'ratio':>7}")
    print(f"{n_steps / t_plain:>14.1f} {n_steps / t_fit:>12.1f} {t_plain / t_fit:>7.2f}\n")
    summary["train_vs_plain"] = t_plain / t_fit


def sampling_throughput(summary: dict, model, n: int = 2000) -> None:
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        print("5. diffusers is not installed: sampling comparison skipped\n")
        return
    print(f"5. Sampling {n} points with 1000 ancestral steps, the same network: our loop against diffusers'")
    s = model.schedule
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                           clip_sample=False)
    theirs.set_timesteps(1000)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))

    def ours():
        return D.sample(model, D.DDPMSampler(s), None, x_T=x_T, generator=torch.Generator().manual_seed(4),
                        progress=False).x

    def diffusers_loop():
        g = torch.Generator().manual_seed(4)
        x = x_T.clone()
        with torch.no_grad():
            for k in theirs.timesteps:
                x = theirs.step(model(x, torch.full((n,), int(k) + 1)), k, x, generator=g).prev_sample
        return x

    # the steps alone, on the network outputs of one run: the part of the loop that differs between the two
    run = D.sample(model, D.DDPMSampler(s), None, x_T=x_T, generator=torch.Generator().manual_seed(4),
                   progress=False, trajectory=True)
    with torch.no_grad():
        outs = [model(x, int(t)) for x, t in zip(run.trajectory[:-1], D.DDPMSampler(s).timesteps, strict=True)]
    sampler = D.DDPMSampler(s)

    def our_steps():
        g, x = torch.Generator().manual_seed(4), x_T
        for k, t in enumerate(sampler.timesteps.tolist()):
            x = sampler.step(outs[k], t, x, generator=g).prev

    def their_steps():
        g, x = torch.Generator().manual_seed(4), x_T
        for k, t in enumerate(theirs.timesteps):
            x = theirs.step(outs[k], t, x, generator=g).prev_sample

    t_ours, t_theirs, s_ours, s_theirs = [], [], [], []
    for _ in range(3):                                # interleaved, best of three each
        t_theirs.append(best(diffusers_loop, 1))
        t_ours.append(best(ours, 1))
        s_theirs.append(best(their_steps, 1))
        s_ours.append(best(our_steps, 1))
    t_ours, t_theirs, s_ours, s_theirs = min(t_ours), min(t_theirs), min(s_ours), min(s_theirs)
    x, mine = diffusers_loop(), ours()
    print(f"{'':>14} {'diffusers s':>12} {'coursepkg s':>12} {'ratio':>7}")
    print(f"{'whole loop':>14} {t_theirs:>12.2f} {t_ours:>12.2f} {t_theirs / t_ours:>7.2f}")
    print(f"{'steps alone':>14} {s_theirs:>12.3f} {s_ours:>12.3f} {s_theirs / s_ours:>7.2f}")
    print(f"largest |difference| of the samples {float((mine - x).abs().max()):.2e}; the network is "
          f"{1 - s_ours / t_ours:.0%} of our loop's time\n")
    summary["sampling_vs_diffusers"] = t_theirs / t_ours
    summary["steps_vs_diffusers"] = s_theirs / s_ours


def roll_quality(summary: dict, full: bool):
    from coursepkg import data, metrics
    from coursepkg.train import fit
    steps = ROLL["steps"][full]
    print(f"6. The swiss roll: TimeMLP{ROLL['hidden']}, {steps} steps, 2000 samples against 2000 data points")
    t0 = time.perf_counter()
    model = _roll_model()
    fit(model, data.kaist_swiss_roll(20_000, seed=0), steps=steps, batch_size=ROLL["batch"], lr=ROLL["lr"],
        schedule=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps), progress=False)
    g = torch.Generator().manual_seed(1)
    ddpm = D.sample(model, D.DDPMSampler(model.schedule), (2000, 2), generator=g, progress=False).x
    t_total = time.perf_counter() - t0
    ddim = D.sample(model, D.DDIMSampler(model.schedule, steps=50), (2000, 2), generator=g, progress=False).x
    ref, other = data.kaist_swiss_roll(2000, seed=11), data.kaist_swiss_roll(2000, seed=12)
    cd, floor = float(metrics.chamfer(ddpm, ref)), float(metrics.chamfer(other, ref))
    cd_ddim = float(metrics.chamfer(ddim, ref))
    swd = float(metrics.sliced_wasserstein(ddpm, ref, seed=0))
    swd_floor = float(metrics.sliced_wasserstein(other, ref, seed=0))
    print(f"{'chamfer':>8} {'floor':>7} {'ddim50':>7} {'SW2':>7} {'SW2 floor':>9} {'train+sample s':>15}")
    print(f"{cd:>8.2f} {floor:>7.2f} {cd_ddim:>7.2f} {swd:>7.3f} {swd_floor:>9.3f} {t_total:>15.1f}\n")
    summary.update(chamfer=cd, chamfer_floor=floor, swd_ratio=swd / swd_floor, ddim50_vs_ddpm1000=cd_ddim / cd,
                   train_sample_s=t_total)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--full", action="store_true", help="train the swiss-roll model longer")
    ap.add_argument("--only", choices=["08", "09"], help="run only one chapter's tables")
    args = ap.parse_args()
    summary: dict = {}
    if args.only != "09":
        against_diffusers(args.repeats)
        exact_elbo(args.n)
        variances(args.n)
    if args.only != "08":
        training_throughput(summary)
        model = roll_quality(summary, args.full)
        sampling_throughput(summary, model)
    print(" ".join(f"{k}={v:.3g}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
