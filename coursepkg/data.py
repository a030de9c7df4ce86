"""Data sets the chapters use: made here or shipped with scikit-learn, except MNIST / Fashion-MNIST (on request).

- :func:`toy_2d`: the 2-D toy sets (``gmm``, ``eight_gaussians``, ``two_moons``, ``swiss_roll``,
  ``checkerboard``), as ``(n, 2)`` tensors, from an explicit seed.
- :func:`mixture_1d`: samples ``(x, z)`` of a 1-D Gaussian mixture with their latent components, for
  the examples of marginals, Bayes' rule and, in chapter 02, EM.
- :func:`digits`: scikit-learn's 8x8 digits, scaled to [0, 1].
- :func:`shapes`: a procedural image set (a square, circle, triangle or cross on a black background),
  drawn here from known generative factors (shape, x, y, scale): the offline stand-in for dSprites that
  the beta-VAE chapter uses. :func:`draw_shapes` draws chosen factors (latent traversals).
- :func:`mnist` and :func:`fashion_mnist`: the original MNIST / Fashion-MNIST IDX files, read from
  :func:`data_root` (``$COURSEPKG_DATA``, else ``~/.cache/coursepkg``), checked against their published
  checksums, downloaded only when asked (``download=True``, e.g. on Colab). :func:`load_idx` parses one
  IDX file. No chapter may need them to build.

Images are batch-first and flat by default, ``(n, size * size)`` like :func:`digits`, for the MLP
encoders; ``flat=False`` gives ``(n, 1, size, size)`` for the small conv nets.

Randomness: every sampler takes ``seed`` or ``generator`` (not both). With neither, the draws come from a
generator seeded from torch's global one (:func:`coursepkg._validate.generator`): reproducible after
:func:`coursepkg.config.seed_everything`, different from one call to the next.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from coursepkg import _validate as V

TOY_2D = ("gmm", "eight_gaussians", "two_moons", "swiss_roll", "checkerboard")


def mixture_1d(n: int, weights=(0.3, 0.7), means=(-2.0, 1.5), stds=(0.6, 1.0), *, seed: int | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of the generative story ``z ~ Cat(weights)``, ``x | z ~ N(means[z], stds[z]^2)``.

    Returns ``(x, z)`` with ``x`` of shape ``(n,)`` and the component indices ``z`` (long) of shape ``(n,)``.
    """
    n = V.positive_int("n", n)
    w = torch.as_tensor(weights, dtype=dtype)
    m, s = torch.as_tensor(means, dtype=dtype), torch.as_tensor(stds, dtype=dtype)
    if not (w.dim() == m.dim() == s.dim() == 1 and len(w) == len(m) == len(s)):
        raise ValueError(f"weights, means and stds must be 1-D of one length, got {len(w)}, {len(m)}, {len(s)}")
    if torch.any(w < 0) or abs(w.sum().item() - 1) > 1e-6:
        raise ValueError("weights must be non-negative and sum to 1")
    if torch.any(s <= 0):
        raise ValueError("stds must be positive")
    gen = V.generator(seed, generator)
    z = torch.multinomial(w, n, replacement=True, generator=gen)
    x = m[z] + s[z] * torch.randn(n, generator=gen, dtype=dtype)
    return x, z


def toy_2d(name: str, n: int, *, noise: float = 0.05, seed: int | None = None,
           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` samples of a 2-D toy distribution, shape ``(n, 2)``, roughly within [-4, 4]^2.

    ``name`` is one of ``gmm`` (three anisotropic Gaussians), ``eight_gaussians`` (a ring of eight),
    ``two_moons``, ``swiss_roll`` and ``checkerboard``. ``noise`` scales the jitter of the
    continuous-shape sets.
    """
    n = V.positive_int("n", n)
    if name not in TOY_2D:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_2D)}")
    V.number("noise", noise, nonnegative=True)
    g = V.generator(seed, generator)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    if name == "gmm":
        means = torch.tensor([[-2.0, -1.0], [2.0, -1.5], [0.0, 2.2]], dtype=torch.float64)
        chol = torch.tensor([[[0.8, 0.0], [0.5, 0.4]], [[0.5, 0.0], [-0.3, 0.7]], [[1.0, 0.0], [0.0, 0.35]]],
                            dtype=torch.float64)
        z = torch.multinomial(torch.tensor([0.35, 0.25, 0.4], dtype=torch.float64), n, replacement=True, generator=g)
        x = means[z] + (chol[z] @ randn(n, 2, 1)).squeeze(-1)
    elif name == "eight_gaussians":
        angles = torch.randint(0, 8, (n,), generator=g, dtype=torch.float64) * (2 * math.pi / 8)
        x = 2.5 * torch.stack([torch.cos(angles), torch.sin(angles)], 1) + (0.1 + noise) * randn(n, 2)
    elif name == "two_moons":
        upper = rand(n) < 0.5
        t = math.pi * rand(n)
        top = torch.stack([torch.cos(t), torch.sin(t)], 1)
        bottom = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        x = torch.where(upper[:, None], top, bottom)
        x = 1.5 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) + 2 * noise * randn(n, 2)
    elif name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * rand(n))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 4.0 + 2 * noise * randn(n, 2)
    else:  # checkerboard: uniform on the black squares of a 4x4 board over [-4, 4]^2
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
        x = torch.stack([col, row], 1).double() * 2 - 4 + 2 * rand(n, 2)
    return x.to(dtype)


def digits(*, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn, no download).

    Returns ``(images, labels)``: ``images`` of shape ``(1797, 64)`` scaled to [0, 1], ``labels`` long.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.as_tensor(bunch.data / 16.0, dtype=dtype), torch.as_tensor(bunch.target, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# shapes: a procedural dSprites
# --------------------------------------------------------------------------------------------------

SHAPES = ("square", "circle", "triangle", "cross")
"""The shapes of :func:`shapes`; a shape id indexes this tuple."""

SHAPE_FACTORS = ("shape", "x", "y", "scale")
"""The generative factors of :func:`shapes`, in the order of its ``factors`` dict."""


def _shape_sdf(name: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (in pixels, negative inside) of the pixel centres to a shape of half-extent ``r``."""
    ax, ay = dx.abs(), dy.abs()
    if name == "square":  # side 2r, area 4 r^2
        return torch.maximum(ax, ay) - r
    if name == "circle":  # radius r, area pi r^2
        return torch.hypot(dx, dy) - r
    if name == "triangle":  # vertices (0, -r), (+-r, r/2): centroid at the centre, apex up, area 1.5 r^2
        return torch.maximum(dy - r / 2, (3 * ax - 2 * dy - 2 * r) / math.sqrt(13.0))
    w = 0.4 * r  # cross: two bars of length 2r and width 2w = 0.8r, area 2.56 r^2
    return torch.minimum(torch.maximum(ax - r, ay - w), torch.maximum(ax - w, ay - r))


def _shape_ids(shape) -> torch.Tensor:
    if isinstance(shape, str):
        shape = [shape]
    if isinstance(shape, (list, tuple)) and any(isinstance(s, str) for s in shape):
        unknown = [s for s in shape if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape {unknown[0]!r}; choose one of {', '.join(SHAPES)}")
        shape = [SHAPES.index(s) for s in shape]
    ids = torch.as_tensor(shape)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"shape must be shape ids (int) or names, got a {ids.dtype} tensor")
    ids = ids.long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= len(SHAPES)):
        raise ValueError(f"shape ids must lie in 0..{len(SHAPES) - 1} ({', '.join(SHAPES)})")
    return ids


def draw_shapes(shape, x, y, scale, *, size: int = 16, flat: bool = True,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw shapes with chosen generative factors, e.g. to traverse one factor with the others fixed.

    ``shape`` is a shape id (an index into :data:`SHAPES`) or name, or a sequence/tensor of them;
    ``x`` and ``y`` are the centre (centroid) of the shape as a fraction of the image width and height
    (column and row, ``y`` grows downwards); ``scale`` sets the half-extent of the shape to
    ``scale * size / 4`` pixels (at ``scale = 1`` the shape is half the image wide). The four arguments
    broadcast to one batch of ``n`` shapes. Each shape is drawn white on black with one pixel of
    anti-aliasing (the intensity of a pixel is ``clamp(0.5 - d, 0, 1)`` with ``d`` the signed distance
    of its centre to the edge), so the summed intensity of an image is about the area of the shape.

    Returns images in [0, 1] of shape ``(n, size * size)``, or ``(n, 1, size, size)`` when ``flat=False``.
    """
    V.integer("size", size, minimum=4)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    ids = _shape_ids(shape)
    ids, x, y, scale = torch.broadcast_tensors(ids, *(torch.as_tensor(v, dtype=work) for v in (x, y, scale)))
    ids, x, y, scale = (v.reshape(-1) for v in (ids, x, y, scale))
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be positive")
    n = ids.numel()
    centres = torch.arange(size, dtype=work) + 0.5  # pixel centres, in pixels
    dx = centres[None, None, :] - (x * size)[:, None, None]  # (n, 1, size): column offsets
    dy = centres[None, :, None] - (y * size)[:, None, None]  # (n, size, 1): row offsets
    r = (scale * size / 4)[:, None, None]
    images = torch.zeros(n, size, size, dtype=work)
    for k, name in enumerate(SHAPES):
        idx = (ids == k).nonzero().squeeze(1)
        if idx.numel():
            images[idx] = (0.5 - _shape_sdf(name, dx[idx], dy[idx], r[idx])).clamp_(0, 1)
    images = images.reshape(n, size * size) if flat else images.unsqueeze(1)
    return images.to(dtype)


def shapes(n: int, *, size: int = 16, kinds: Sequence[str] = SHAPES, seed: int | None = None,
           generator: torch.Generator | None = None, flat: bool = True, dtype: torch.dtype = torch.float32,
           return_factors: bool = False):
    """``n`` images of one white shape on a black background, from known, independent generative factors.

    The offline stand-in for dSprites (Matthey et al., 2017): nothing is downloaded, and the factors
    that made each image are known, so a beta-VAE's latents can be compared with them. Each image
    draws independently

    - ``shape`` uniformly among ``kinds`` (names from :data:`SHAPES`; the id is the index in
      :data:`SHAPES`, whatever ``kinds`` is),
    - ``x`` and ``y``, the centre of the shape as a fraction of the image width and height, uniform
      on [0.25, 0.75] (every shape fits in the image at every scale),
    - ``scale`` uniform on [0.5, 1]: the half-extent of the shape is ``scale * size / 4`` pixels,

    and is drawn by :func:`draw_shapes` (anti-aliased, values in [0, 1]). 10 000 images of 16x16 take
    a few tens of milliseconds.

    Returns the images, ``(n, size * size)`` or ``(n, 1, size, size)`` when ``flat=False``; with
    ``return_factors=True``, ``(images, factors)`` where ``factors`` maps each name of
    :data:`SHAPE_FACTORS` to a tensor of shape ``(n,)``: ``shape`` (long), ``x``, ``y``, ``scale`` (``dtype``).
    """
    n = V.positive_int("n", n)
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not kinds or any(k not in SHAPES for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {', '.join(SHAPES)}, got {kinds!r}")
    g = V.generator(seed, generator)
    ids = torch.tensor([SHAPES.index(k) for k in kinds])
    shape = ids[torch.randint(len(ids), (n,), generator=g)]
    x = 0.25 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    y = 0.25 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    scale = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    images = draw_shapes(shape, x, y, scale, size=size, flat=flat, dtype=dtype)
    if not return_factors:
        return images
    return images, {"shape": shape, "x": x.to(dtype), "y": y.to(dtype), "scale": scale.to(dtype)}


# --------------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST from their IDX files
# --------------------------------------------------------------------------------------------------

DATA_ENV = "COURSEPKG_DATA"
"""The environment variable naming the data folder (see :func:`data_root`)."""

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
"""The (images, labels) files of each split, as published (same names for MNIST and Fashion-MNIST)."""

# MD5 checksums of the published .gz files and the mirrors, as in torchvision.datasets.MNIST and FashionMNIST.
IDX_SETS = {
    "mnist": {
        "name": "MNIST",
        "folder": "mnist",
        "function": "mnist",
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "checksums": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion": {
        "name": "Fashion-MNIST",
        "folder": "fashion_mnist",
        "function": "fashion_mnist",
        "mirrors": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "checksums": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}
"""Per data set (``kind``): display name, sub-folder of :func:`data_root`, mirrors and checksums."""

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
"""The names of the Fashion-MNIST labels 0..9."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DOWNLOAD_TIMEOUT = 60  # seconds per connection attempt


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder the downloaded data sets live in: ``root`` if given, else ``$COURSEPKG_DATA``, else
    ``~/.cache/coursepkg``. Each data set has its own sub-folder (``mnist``, ``fashion_mnist``)."""
    if root is None:
        root = os.environ.get(DATA_ENV) or Path("~") / ".cache" / "coursepkg"
    return Path(root).expanduser()


def load_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (the format of MNIST), plain or gzip-compressed, into a tensor.

    The format: a big-endian magic number ``0x0000TTDD`` (two zero bytes, a type code ``TT``: 0x08
    unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64, and the number
    of dimensions ``DD``), then ``DD`` big-endian uint32 sizes, then the data in C order. Compression is
    recognised from the content (the gzip magic bytes), not the name. A file whose size does not match
    its header (truncated, or trailing bytes), a damaged gzip stream or a wrong magic number is a
    ``ValueError`` naming the file. Unsigned bytes give a ``torch.uint8`` tensor.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"corrupt IDX file {path}: the gzip stream is damaged or truncated ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"corrupt IDX file {path}: expected at least 4 bytes (the magic number), found {len(raw)}")
    if raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"not an IDX file {path}: bad magic number 0x{int.from_bytes(raw[:4], 'big'):08X} "
                         f"(expected 0x0000TTDD: two zero bytes, a type code TT in {codes}, "
                         "the number of dimensions DD)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt IDX file {path}: expected a {header}-byte header for {ndim} dimensions, "
                         f"found {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dt.itemsize
    if len(raw) != expected:
        raise ValueError(f"corrupt IDX file {path}: expected {expected} bytes, found {len(raw)} "
                         f"(header says {'x'.join(map(str, dims))} of {dt.name})")
    array = np.frombuffer(raw, dtype=dt, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dt.newbyteorder("=")))


def _checksum(path: Path, expected: str) -> str:
    """The hex digest of ``path`` in the algorithm of ``expected``: MD5 (32 hex digits) or SHA-256 (64)."""
    if len(expected) == 32:
        digest = hashlib.md5(usedforsecurity=False)
    elif len(expected) == 64:
        digest = hashlib.sha256()
    else:
        raise ValueError(f"unknown checksum {expected!r}: give an MD5 (32 hex digits) or a SHA-256 (64)")
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, folder: Path, mirrors: Sequence[str], expected: str | None) -> None:
    """Fetch ``name`` from the first mirror that serves it with the right checksum, into ``folder``.

    Each attempt writes to a temporary file in ``folder``; only a verified file is moved to its name,
    and nothing else is left behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                shutil.copyfileobj(response, out)
            found = None if expected is None else _checksum(Path(tmp), expected)
            if found is not None and found != expected.lower():
                errors.append(f"{url}: checksum mismatch (expected {expected}, found {found})")
                continue
            os.replace(tmp, folder / name)
            return
        except (OSError, http.client.HTTPException, ValueError) as err:
            errors.append(f"{url}: {type(err).__name__}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    tried = "\n".join(f"  {e}" for e in errors) or "  (no mirrors given)"
    raise RuntimeError(f"could not download {name} into {folder}: every mirror failed:\n{tried}\n"
                       "Check the network connection, or copy the file there by hand.")


def mnist(root: str | os.PathLike | None = None, *, split: str = "train", kind: str = "mnist",
          download: bool = False, binarize: bool | str | None = False, flat: bool = True,
          dtype: torch.dtype = torch.float32, seed: int | None = None, generator: torch.Generator | None = None,
          verify: bool = True, checksums: Mapping[str, str] | None = None,
          mirrors: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST (``kind="mnist"``) or Fashion-MNIST (``kind="fashion"``), read from the original IDX files.

    The files (:data:`IDX_FILES`, the ``.gz`` files as published) are looked up in
    ``data_root(root) / "mnist"`` (or ``/ "fashion_mnist"``); ``root`` defaults to ``$COURSEPKG_DATA``,
    else ``~/.cache/coursepkg``. A missing file is a ``FileNotFoundError`` unless ``download=True``,
    which fetches the two files of ``split`` from the mirrors in turn (e.g. on Colab; about 10 MB for
    the training images). Every file is checked against its published MD5 (:data:`IDX_SETS`; the ones
    torchvision uses): a mismatch is a ``ValueError`` (with ``download=True`` the file is fetched again).
    ``checksums`` overrides entries of that table (MD5 or SHA-256 hex digests, by file name),
    ``verify=False`` skips the check, and ``mirrors`` replaces the list of base URLs.

    ``split`` is ``"train"`` (60 000 images) or ``"test"`` (10 000). ``binarize``: ``False`` keeps the
    grey levels, ``"threshold"`` sets the pixels above 0.5 to 1 and the others to 0, ``"stochastic"``
    draws each pixel from a Bernoulli with the grey level as its probability, from ``seed`` or
    ``generator`` (the binarized MNIST of Burda et al., 2016; a new seed per epoch gives dynamic
    binarization).

    Returns ``(images, labels)``: images in [0, 1] of shape ``(n, 784)``, or ``(n, 1, 28, 28)`` when
    ``flat=False``, and labels (long) of shape ``(n,)``.
    """
    if kind not in IDX_SETS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(IDX_SETS)}")
    if split not in IDX_FILES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(IDX_FILES)}")
    if binarize is None or binarize is False:
        binarize = False
    elif binarize not in ("threshold", "stochastic"):
        raise ValueError(f"binarize must be False, 'threshold' or 'stochastic', got {binarize!r}")
    info = IDX_SETS[kind]
    folder = data_root(root) / info["folder"]
    names = IDX_FILES[split]
    table = {**info["checksums"], **(checksums or {})}
    if not download:
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{' and '.join(missing)} not found in {folder}. Call {info['function']}(..., download=True) "
                f"to download the {info['name']} files there, or copy the files {', '.join(names)} into "
                f"that folder by hand (set {DATA_ENV} or pass root= to use another folder).")
    paths = []
    for name in names:
        path = folder / name
        expected = table.get(name) if verify else None
        if path.is_file():
            found = None if expected is None else _checksum(path, expected)
            if found is None or found == expected.lower():
                paths.append(path)
                continue
            if not download:
                raise ValueError(f"corrupt or incomplete file {path} (checksum mismatch: expected {expected}, "
                                 f"found {found}); delete it and download again")
        _download(name, folder, info["mirrors"] if mirrors is None else mirrors, expected)
        paths.append(path)
    images, labels = load_idx(paths[0]), load_idx(paths[1])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{paths[0]} and {paths[1]} do not form an image set: expected images (n, h, w) and "
                         f"labels (n,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    x = images.to(torch.float64 if dtype == torch.float64 else torch.float32) / 255.0
    if binarize == "threshold":
        x = (x > 0.5).to(x.dtype)
    elif binarize == "stochastic":
        x = torch.bernoulli(x, generator=V.generator(seed, generator))
    x = x.reshape(len(x), -1) if flat else x.unsqueeze(1)
    return x.to(dtype), labels.long()


def fashion_mnist(root: str | os.PathLike | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al., 2017): :func:`mnist` with ``kind="fashion"``; same arguments and returns.

    The label names are :data:`FASHION_CLASSES`.
    """
    if "kind" in kwargs:
        raise TypeError("fashion_mnist() takes no kind argument; call mnist(kind=...) instead")
    return mnist(root, kind="fashion", **kwargs)


def _kaist_swiss_roll_moments() -> tuple[float, float]:
    """The overall mean and standard deviation (one scalar each, over both coordinates) of the KAIST roll.

    ``make_swiss_roll(hole=True)`` draws ``t`` uniformly on three bands ``[1.5 pi, 2.5 pi]``, ``[2.5 pi, 3.5 pi]``,
    ``[3.5 pi, 4.5 pi]`` with weights 3/8, 2/8, 3/8 (the hole removes one of the nine cells of the ``(t, y)``
    rectangle, in the middle band) and keeps ``(t cos t, t sin t)``; the moments follow in closed form:
    ``int t cos t = t sin t + cos t``, ``int t sin t = sin t - t cos t`` and ``x^2 + z^2 = t^2``."""
    mean_x = mean_z = mean_t2 = 0.0
    for band, weight in enumerate((3 / 8, 2 / 8, 3 / 8)):
        a, b = math.pi * (1.5 + band), math.pi * (2.5 + band)
        mean_x += weight / math.pi * ((b * math.sin(b) + math.cos(b)) - (a * math.sin(a) + math.cos(a)))
        mean_z += weight / math.pi * ((math.sin(b) - b * math.cos(b)) - (math.sin(a) - a * math.cos(a)))
        mean_t2 += weight / math.pi * (b**3 - a**3) / 3
    mean = (mean_x + mean_z) / 2
    return mean, math.sqrt(mean_t2 / 2 - mean**2)


def kaist_swiss_roll(n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` points of the swiss roll of the KAIST CS492(D) diffusion assignments, shape ``(n, 2)``.

    As ``2d_plot_diffusion_todo/dataset.py`` of KAIST-Visual-AI-Group/Diffusion-Assignment1-DDPM (Fall 2024)
    builds it: scikit-learn's ``make_swiss_roll(n, noise=0.0, hole=True)``, its coordinates 0 and 2, minus
    their overall mean, divided by their overall standard deviation (one scalar each, over both coordinates
    together: ``(ds - ds.mean()) / ds.std()``), times 2. KAIST takes these statistics from its draw of
    1 000 000 points; here they are the exact values of the distribution (mean 1.659, standard deviation
    6.766, :func:`_kaist_swiss_roll_moments`), so that every draw, of any size, is scaled alike. The data
    set of :func:`coursepkg.metrics.chamfer`'s KAIST bar (below 20 at 2 048 samples against 2 048 points).

    scikit-learn draws from NumPy: its ``random_state`` is an int drawn from ``seed`` or ``generator`` (with
    neither, from torch's global generator, like every sampler here).
    """
    from sklearn.datasets import make_swiss_roll

    n = V.positive_int("n", n)
    g = V.generator(seed, generator)
    random_state = int(torch.randint(0, V.SEED_LIMIT, (1,), generator=g, device=g.device).item())
    points = make_swiss_roll(n, noise=0.0, random_state=random_state, hole=True)[0][:, [0, 2]]
    mean, std = _kaist_swiss_roll_moments()
    return torch.as_tensor(2 * (points - mean) / std, dtype=dtype)
