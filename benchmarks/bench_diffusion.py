"""Chapter 08's diffusion module: speed against diffusers, and the exact ELBO of the optimal DDPM.

    .venv/bin/python benchmarks/bench_diffusion.py [--repeats 5] [--n 2000]

Three tables, from one run:

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
            A = torch.cat([a.steps[:, 1:], a.prior[:, None]], 1)          # the T + 1 terms of each
            B = torch.cat([b.steps[:, 1:], b.prior[:, None]], 1)
            per_term = float((B.var(0) / A.var(0))[1:-1].median())
            pick = torch.randint(0, A.shape[1], (A.shape[0],), generator=g)
            rows = torch.arange(A.shape[0])
            one_t = float((A.shape[1] * B[rows, pick]).var() / (A.shape[1] * A[rows, pick]).var())
            whole = float(b.total.var() / a.total.var())
            print(f"{T:>5} {variance:>10} {per_term:>18.1f} {one_t:>13.1f} {whole:>17.2f}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    against_diffusers(args.repeats)
    exact_elbo(args.n)
    variances(args.n)


if __name__ == "__main__":
    main()
