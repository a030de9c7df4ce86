"""Training throughput of coursepkg.train.fit + coursepkg.vae.VAE against a plain PyTorch loop: the 784-400-20
MLP VAE with a Bernoulli likelihood, Adam (lr 1e-3), batch size 128, the same number of steps.

    .venv/bin/python benchmarks/bench_vae.py [--steps 300] [--repeats 3] [--threads N] [--data digits|random]
                                             [--device cpu|cuda]

The data are scikit-learn's 8x8 digits upsampled to 28x28 (1797 images, no download), or random binary
784-pixel images (``--data random``). Four runs, interleaved ``--repeats`` times (the median is shown):

- ``plain loop, PyTorch example``: the classic ``examples/vae`` model (fc1, fc21/fc22, fc3, fc4) and loss
  (``F.binary_cross_entropy`` on sigmoid outputs + the closed-form KLD, here divided by the batch size),
  with a ``loss.item()`` a step, as that example logs;
- ``plain loop, VAE.loss``: ``VAE.mlp(784, (400,), 20)`` and its ``loss``, in a loop that draws the same
  batches and noise as ``fit`` (so its final weights must equal fit's, bit for bit on a CPU);
- ``fit, progress=False`` and ``fit, progress=True`` (the bar is rendered into a buffer, not a terminal).

Prints steps/s of each, the ratio to the plain loop with the same model (1.00: no overhead from ``fit``), and
the mean loss of the last 50 steps; ``max |dtheta|`` compares fit's final weights with the plain loop's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from coursepkg.config import seed_everything
from coursepkg.data import digits
from coursepkg.train import fit
from coursepkg.vae import VAE

BATCH, LR, SEED = 128, 1e-3, 0


class ExampleVAE(nn.Module):
    """The model of PyTorch's examples/vae/main.py."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def example_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.shape[0]


def make_data(kind: str) -> torch.Tensor:
    if kind == "random":
        return torch.bernoulli(torch.full((2000, 784), 0.3), generator=torch.Generator().manual_seed(0))
    x = digits()[0].reshape(-1, 1, 8, 8)
    return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1).reshape(-1, 784)


def new_vae(device) -> VAE:
    torch.manual_seed(1)
    return VAE.mlp(784, (400,), 20).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batches(x: torch.Tensor, steps: int):
    """fit's batch order: a permutation per epoch from a generator seeded with SEED, full batches only."""
    g = torch.Generator().manual_seed(SEED)
    per_epoch = x.shape[0] // BATCH
    perm = None
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(x.shape[0], generator=g)
        yield x[perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH].to(x.device)]


def run_example(x, steps, device):
    torch.manual_seed(1)
    model = ExampleVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    seed_everything(SEED)
    losses = []
    sync(device)
    t0 = time.perf_counter()
    for xb in batches(x, steps):
        recon, mu, logvar = model(xb)
        loss = example_loss(recon, xb, mu, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sync(device)
    return time.perf_counter() - t0, losses, model


def run_plain(x, steps, device):
    model = new_vae(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    seed_everything(SEED)
    losses = []
    sync(device)
    t0 = time.perf_counter()
    for xb in batches(x, steps):
        loss = model.loss(xb)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sync(device)
    return time.perf_counter() - t0, losses, model


def run_fit(x, steps, device, progress):
    model = new_vae(device)
    sink = io.StringIO()
    sync(device)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(sink):
        h = fit(model, x, steps=steps, batch_size=BATCH, lr=LR, seed=SEED, progress=progress, device=device)
    sync(device)
    return time.perf_counter() - t0, h["loss"], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data", choices=["digits", "random"], default="digits")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = make_data(args.data).to(args.device)
    runs = {
        "plain loop, PyTorch example": lambda: run_example(x, args.steps, args.device),
        "plain loop, VAE.loss": lambda: run_plain(x, args.steps, args.device),
        "fit, progress=False": lambda: run_fit(x, args.steps, args.device, False),
        "fit, progress=True": lambda: run_fit(x, args.steps, args.device, True),
    }
    # warm-up: lazy imports (the first optimizer pulls in torch._dynamo, seconds), the allocator, caches
    run_example(x, 5, args.device)
    run_fit(x, 5, args.device, True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t, losses, model = run()
            times[name].append(t)
            results[name] = (losses, model)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}; VAE 784-400-20, "
          f"Bernoulli, Adam lr {LR}, batch {BATCH}, {args.steps} steps, data {args.data} ({x.shape[0]} images); "
          f"median of {args.repeats}")
    print(f"{'run':<30} {'steps/s':>9} {'vs plain VAE.loss':>18} {'last-50 loss':>13} {'max |dtheta| vs plain':>22}")
    ref_rate = args.steps / statistics.median(times["plain loop, VAE.loss"])
    ref_model = results["plain loop, VAE.loss"][1]
    for name in runs:
        rate = args.steps / statistics.median(times[name])
        losses, model = results[name]
        last = sum(losses[-50:]) / len(losses[-50:])
        if name.startswith("fit"):
            diff = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(),
                                                                  ref_model.state_dict().values(), strict=True))
            diff_s = f"{diff:.1e}"
        else:
            diff_s = "-"
        print(f"{name:<30} {rate:>9.1f} {rate / ref_rate:>17.3f}x {last:>13.3f} {diff_s:>22}")


if __name__ == "__main__":
    main()
