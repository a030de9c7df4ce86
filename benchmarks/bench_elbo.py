"""Chapter 03's exact log-likelihood and bounds against scikit-learn's FactorAnalysis.

    .venv/bin/python benchmarks/bench_elbo.py [--repeats 5]

Factor analysis is the linear-Gaussian model of chapter 03 (``z ~ N(0, I)``,
``x | z ~ N(W z + b, diag(psi))``). scikit-learn fits it; its ``score_samples`` is the exact per-point
log-likelihood. The script plugs the fitted ``components_``, ``mean_`` and ``noise_variance_`` into
:class:`coursepkg.elbo.LinearGaussianModel` and reports, per shape ``[N, Dx] -> Dz``:

- the time of ``score_samples`` and of ``log_likelihood`` (best of ``--repeats``), their ratio
  (sklearn / coursepkg: above 1 means faster) and the largest difference of the two log-likelihoods;
- how far below that exact value the chapter's bounds lie for the mean-field ``q`` (the best diagonal
  Gaussian), averaged over the first 1000 points: the closed-form ELBO and the IWAE bounds with
  ``k = 1, 10, 100`` (Monte Carlo, with standard errors), so that the gaps of Eq. ``iwae-bound`` can be
  read off.

scikit-learn returns loadings for which ``W^T Psi^-1 W`` is diagonal: its posterior factorises and
the mean-field ``q`` is exact. The model only determines ``W`` up to a rotation (``W R`` gives the same
``p(x)`` for any orthogonal ``R``), so the bounds are measured on ``W R`` for a random rotation, where
the posterior is correlated; the log-likelihoods are compared on both.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.decomposition import FactorAnalysis

from coursepkg.elbo import LinearGaussianModel, iwae_bound

SHAPES = [(2_000, 10, 3), (20_000, 50, 10), (50_000, 200, 20)]


def make_data(n: int, dx: int, dz: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(dx, dz, generator=g, dtype=torch.float64)
    psi = 0.1 + torch.rand(dx, generator=g, dtype=torch.float64)
    return LinearGaussianModel(W, torch.randn(dx, generator=g, dtype=torch.float64), psi).sample(n, generator=g).x


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{'shape':>22} | {'sklearn s':>9} {'ours s':>9} {'ratio':>6} {'max |diff|':>10} | "
          f"{'gap ELBO':>9} {'gap IWAE-1':>14} {'gap IWAE-10':>14} {'gap IWAE-100':>14}")
    for n, dx, dz in SHAPES:
        x = make_data(n, dx, dz)
        fa = FactorAnalysis(n_components=dz, random_state=0).fit(x.numpy())
        model = LinearGaussianModel(torch.from_numpy(fa.components_.T.copy()), torch.from_numpy(fa.mean_),
                                    torch.from_numpy(fa.noise_variance_))
        t_sk, ref = best_time(lambda: fa.score_samples(x.numpy()), args.repeats)
        t_us, ours = best_time(lambda: model.log_likelihood(x), args.repeats)
        diff = (torch.from_numpy(ref) - ours).abs().max().item()
        R, _ = torch.linalg.qr(torch.randn(dz, dz, dtype=torch.float64))
        rotated = LinearGaussianModel(model.W @ R, model.b, model.noise_var)
        diff = max(diff, (torch.from_numpy(ref) - rotated.log_likelihood(x)).abs().max().item())
        model, xs = rotated, x[:1_000]
        exact = model.log_likelihood(xs)
        q = model.mean_field_posterior(xs)
        gaps = [f"{(exact - model.exact_elbo(xs, q)).mean().item():9.4f}"]
        for k in (1, 10, 100):
            est = iwae_bound(xs, model.log_joint, q, k, n_estimates=20)
            se = est.stderr.square().sum().sqrt().item() / len(xs)        # of the mean over the points
            gaps.append(f"{(exact - est.estimate).mean().item():7.4f}±{se:.4f}")
        print(f"{f'[{n}, {dx}] -> {dz}':>22} | {t_sk:9.4f} {t_us:9.4f} {t_sk / t_us:6.2f} {diff:10.2e} | "
              + " ".join(f"{g:>14}" for g in gaps))


if __name__ == "__main__":
    main()
