"""coursepkg.data: shapes, reproducibility, the distributions they claim, clear errors."""

import gzip
import hashlib
import io
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from coursepkg import data


@pytest.mark.parametrize("name", data.TOY_2D)
def test_toy_2d_shapes_and_reproducibility(name):
    x = data.toy_2d(name, 500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, data.toy_2d(name, 500, seed=3))
    assert not torch.equal(x, data.toy_2d(name, 500, seed=4))
    assert x.abs().max() < 6


def test_checkerboard_lies_on_black_squares():
    x = data.toy_2d("checkerboard", 4000, seed=0, dtype=torch.float64)
    cells = torch.floor((x + 4) / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_eight_gaussians_sit_on_a_ring():
    x = data.toy_2d("eight_gaussians", 4000, seed=0, noise=0.0)
    r = x.norm(dim=1)
    assert abs(r.mean().item() - 2.5) < 0.05


def test_mixture_1d_matches_its_parameters():
    w, m, s = (0.25, 0.75), (-3.0, 2.0), (0.5, 1.5)
    x, z = data.mixture_1d(200_000, w, m, s, seed=0)
    assert x.shape == z.shape == (200_000,)
    assert abs((z == 0).double().mean().item() - 0.25) < 0.005
    for k in range(2):
        xk = x[z == k]
        assert abs(xk.mean().item() - m[k]) < 0.02 and abs(xk.std().item() - s[k]) < 0.02
    # the marginal mean is the weighted mean of the component means
    assert abs(x.mean().item() - (0.25 * -3 + 0.75 * 2)) < 0.02


def test_digits_are_scaled_images():
    images, labels = data.digits()
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert images.min() >= 0 and images.max() == 1
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("call, message", [
    (lambda: data.toy_2d("spiral", 10), "unknown toy data set 'spiral'"),
    (lambda: data.toy_2d("gmm", 0), "positive int"),
    (lambda: data.toy_2d("gmm", 10, noise=-1), "noise"),
    (lambda: data.toy_2d("gmm", 10, seed=1, generator=torch.Generator()), "either seed or generator"),
    (lambda: data.mixture_1d(10, (0.5, 0.6), (0, 1), (1, 1)), "sum to 1"),
    (lambda: data.mixture_1d(10, (0.5, 0.5), (0, 1, 2), (1, 1)), "one length"),
    (lambda: data.mixture_1d(10, (0.5, 0.5), (0, 1), (1, 0)), "stds must be positive"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------

def _centre_of_mass(images):
    """Intensity-weighted centre (column, row) in pixels of images (n, 1, s, s)."""
    im = images[:, 0].double()
    centres = torch.arange(im.shape[-1], dtype=torch.float64) + 0.5
    mass = im.sum((1, 2))
    return (im.sum(1) * centres).sum(1) / mass, (im.sum(2) * centres).sum(1) / mass


def test_shapes_shapes_dtype_and_range():
    x, factors = data.shapes(300, seed=0, return_factors=True)
    assert x.shape == (300, 256) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and (x.amax(1) > 0.5).all()  # every image shows a shape
    assert tuple(factors) == data.SHAPE_FACTORS
    assert factors["shape"].dtype == torch.long and set(factors["shape"].tolist()) == set(range(len(data.SHAPES)))
    for name, (lo, hi) in {"x": (0.25, 0.75), "y": (0.25, 0.75), "scale": (0.5, 1.0)}.items():
        assert factors[name].shape == (300,) and factors[name].dtype == torch.float32
        assert factors[name].min() >= lo and factors[name].max() <= hi
    images = data.shapes(7, size=28, flat=False, dtype=torch.float64, seed=0)
    assert images.shape == (7, 1, 28, 28) and images.dtype == torch.float64
    assert data.shapes(7, size=28, seed=0).shape == (7, 784)
    # flat and image layouts hold the same pixels
    assert torch.allclose(images.reshape(7, -1).float(), data.shapes(7, size=28, seed=0), atol=1e-5)


def test_shapes_are_reproducible():
    a, fa = data.shapes(200, seed=5, return_factors=True)
    b, fb = data.shapes(200, seed=5, return_factors=True)
    assert torch.equal(a, b) and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not torch.equal(a, data.shapes(200, seed=6))
    assert torch.equal(a, data.shapes(200, generator=torch.Generator().manual_seed(5)))


def test_shapes_kinds_selects_the_shapes():
    _, factors = data.shapes(200, kinds=("circle", "cross"), seed=0, return_factors=True)
    assert set(factors["shape"].tolist()) == {data.SHAPES.index("circle"), data.SHAPES.index("cross")}
    _, factors = data.shapes(50, kinds="triangle", seed=0, return_factors=True)
    assert set(factors["shape"].tolist()) == {data.SHAPES.index("triangle")}


def test_shapes_sit_where_their_factors_say():
    size = 16
    images, factors = data.shapes(2000, size=size, flat=False, seed=1, return_factors=True)
    cx, cy = _centre_of_mass(images)
    assert (cx - factors["x"].double() * size).abs().max() < 0.25
    assert (cy - factors["y"].double() * size).abs().max() < 0.25
    # within each shape, the summed intensity grows with the scale (as its square)
    mass = images.double().sum((1, 2, 3))
    for k in range(len(data.SHAPES)):
        mine = factors["shape"] == k
        r = torch.corrcoef(torch.stack([mass[mine], factors["scale"][mine].double() ** 2]))[0, 1]
        assert r > 0.98


def test_draw_shapes_areas_and_scale():
    # at equal scale the shapes light different amounts: their areas in units of r^2 (r = scale * size / 4)
    size, r = 32, 8
    images = data.draw_shapes(list(range(len(data.SHAPES))), 0.5, 0.5, 1.0, size=size, dtype=torch.float64)
    areas = torch.tensor([4.0, torch.pi, 1.5, 2.56], dtype=torch.float64) * r**2
    assert torch.allclose(images.sum(1), areas, rtol=0.03)
    assert len(set(images.sum(1).round().tolist())) == len(data.SHAPES)
    # larger scale, more lit pixels; names and ids draw the same
    for name in data.SHAPES:
        mass = data.draw_shapes(name, 0.5, 0.5, torch.linspace(0.3, 1.0, 8), size=size).sum(1)
        assert (mass.diff() > 0).all() and (mass > 0).all()
    assert torch.equal(data.draw_shapes(["circle", "cross"], 0.4, 0.6, 0.8),
                       data.draw_shapes(torch.tensor([1, 3]), 0.4, 0.6, 0.8))
    # a shape moved by whole pixels is the same picture, shifted
    a = data.draw_shapes("triangle", 0.5, 0.5, 0.75, size=16, flat=False)[0, 0]
    b = data.draw_shapes("triangle", 0.5 + 2 / 16, 0.5 - 1 / 16, 0.75, size=16, flat=False)[0, 0]
    assert torch.allclose(torch.roll(a, (-1, 2), (0, 1)), b, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: data.shapes(0), "positive int"),
    (lambda: data.shapes(5, size=2), "size must be an int >= 4"),
    (lambda: data.shapes(5, kinds=("square", "star")), "kinds must be a non-empty subset"),
    (lambda: data.shapes(5, kinds=()), "kinds must be a non-empty subset"),
    (lambda: data.shapes(5, seed=1, generator=torch.Generator()), "either seed or generator"),
    (lambda: data.draw_shapes("star", 0.5, 0.5, 1.0), "unknown shape 'star'"),
    (lambda: data.draw_shapes(7, 0.5, 0.5, 1.0), "shape ids must lie in"),
    (lambda: data.draw_shapes(1.0, 0.5, 0.5, 1.0), "shape must be shape ids"),
    (lambda: data.draw_shapes(0, 0.5, 0.5, 0.0), "scale must be positive"),
    (lambda: data.draw_shapes(0, float("nan"), 0.5, 1.0), "x and y must be finite"),
])
def test_shapes_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------
# IDX files, MNIST and Fashion-MNIST (small synthetic files in tmp_path; nothing is downloaded)
# ---------------------------------------------------------------------------------------------------

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def _idx_bytes(array, compress=True):
    """An IDX file for ``array``, written independently of the package (struct, big-endian)."""
    array = np.asarray(array)
    body = struct.pack(">BBBB", 0, 0, _IDX_CODES[array.dtype], array.ndim)
    body += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(array.dtype.newbyteorder(">")).tobytes()
    return gzip.compress(body, mtime=0) if compress else body


def _fake_set(n=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def _write_split(folder, split="train", n=10, seed=0):
    """Write a synthetic split into ``folder``; returns (images, labels, checksums of the files)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _fake_set(n, seed)
    sums = {}
    for name, array in zip(data.IDX_FILES[split], (images, labels), strict=True):
        payload = _idx_bytes(array)
        (folder / name).write_bytes(payload)
        sums[name] = hashlib.sha256(payload).hexdigest()
    return images, labels, sums


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root inside tmp_path, also set as $COURSEPKG_DATA so that no call can fall back on ~/.cache."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_load_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 5) * 7 - 20).reshape(2, 3, 5)
    if dtype == np.uint8:
        array = array % 256
    array = array.astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(_idx_bytes(array, compress))
    out = data.load_idx(path)
    assert out.shape == (2, 3, 5) and out.dtype == torch.from_numpy(array).dtype
    assert np.array_equal(out.numpy(), array)
    labels = np.arange(10, dtype=np.uint8)
    (tmp_path / "labels").write_bytes(_idx_bytes(labels, compress))
    assert data.load_idx(tmp_path / "labels").tolist() == list(range(10))


def test_load_idx_rejects_a_wrong_magic_number(tmp_path):
    good = _idx_bytes(np.zeros((3, 4), np.uint8), compress=False)
    for bad in (b"\x01" + good[1:], good[:2] + b"\x07" + good[3:]):  # non-zero lead byte; unknown type code
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(ValueError, match="not an IDX file .*bad magic number"):
            data.load_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_rejects_a_truncated_file(tmp_path, compress):
    good = _idx_bytes(np.zeros((10, 28, 28), np.uint8), compress=False)  # 16 + 7840 bytes
    for body, found in ((good[:-100], len(good) - 100), (good + b"\0", len(good) + 1)):
        path = tmp_path / "short.gz"
        path.write_bytes(gzip.compress(body) if compress else body)
        with pytest.raises(ValueError, match=f"corrupt IDX file .*short.gz: expected 7856 bytes, found {found}"):
            data.load_idx(path)
    path.write_bytes(good[:10])  # the header itself is cut
    with pytest.raises(ValueError, match="corrupt IDX file .*16-byte header"):
        data.load_idx(path)
    path.write_bytes(gzip.compress(good)[:-20])  # the gzip stream is cut
    with pytest.raises(ValueError, match="corrupt IDX file .*gzip stream"):
        data.load_idx(path)


def test_mnist_reads_the_idx_files(root):
    folder = root / "mnist"
    images, labels, sums = _write_split(folder, "test", n=10)
    x, y = data.mnist(split="test", verify=False)  # root from $COURSEPKG_DATA
    assert x.shape == (10, 784) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.allclose(x, torch.from_numpy(images).reshape(10, -1).float() / 255)
    assert y.tolist() == labels.tolist()
    x4, _ = data.mnist(root, split="test", flat=False, dtype=torch.float64, checksums=sums)
    assert x4.shape == (10, 1, 28, 28) and x4.dtype == torch.float64
    assert torch.equal(x4.reshape(10, -1).float(), x)
    # Fashion-MNIST lives in its own folder, with the same file names
    _write_split(root / "fashion_mnist", "train", n=12, seed=1)
    assert data.fashion_mnist(root, verify=False)[0].shape == (12, 784)


def test_mnist_missing_files_say_how_to_get_them(root):
    with pytest.raises(FileNotFoundError) as err:
        data.mnist(root)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert str(root / "mnist") in message and "download=True" in message
    _write_split(root / "mnist", "train")
    (root / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz not found") as err:
        data.mnist(root, verify=False)
    assert "train-images" not in str(err.value).split(" not found")[0]
    with pytest.raises(FileNotFoundError, match=r"fashion_mnist\(\.\.\., download=True\)") as err:
        data.fashion_mnist(root, split="test")
    assert str(root / "fashion_mnist") in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert not (root / "fashion_mnist").exists()  # looking does not create folders


def test_mnist_checksum_mismatch(root):
    _, _, sums = _write_split(root / "mnist", "train")
    # the published checksums do not match synthetic files
    with pytest.raises(ValueError, match="corrupt or incomplete file .*train-images-idx3-ubyte.gz "
                                         r"\(checksum mismatch.*delete it and download again"):
        data.mnist(root)
    # nor does a table of our own once a file is damaged; MD5 tables work as well as SHA-256 ones
    labels = root / "mnist" / "train-labels-idx1-ubyte.gz"
    md5 = {name: hashlib.md5((root / "mnist" / name).read_bytes()).hexdigest() for name in sums}
    assert data.mnist(root, checksums=md5)[1].shape == (10,)
    labels.write_bytes(labels.read_bytes()[:-3])
    for table in (sums, md5):
        with pytest.raises(ValueError, match="corrupt or incomplete file .*train-labels-idx1-ubyte.gz"):
            data.mnist(root, checksums=table)


def test_mnist_binarization(root):
    images, _, _ = _write_split(root / "mnist", "train", n=10)
    grey, _ = data.mnist(root, verify=False)
    hard, _ = data.mnist(root, verify=False, binarize="threshold")
    assert torch.equal(hard, (grey > 0.5).float())
    a, _ = data.mnist(root, verify=False, binarize="stochastic", seed=3)
    b, _ = data.mnist(root, verify=False, binarize="stochastic", seed=3)
    c, _ = data.mnist(root, verify=False, binarize="stochastic", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(a.mean().item() - grey.mean().item()) < 0.02  # E[Bernoulli(p)] = p, over 7840 pixels
    pixels = torch.from_numpy(images).reshape(10, -1)
    assert (a[pixels == 0] == 0).all() and (a[pixels == 255] == 1).all()
    d, _ = data.mnist(root, verify=False, binarize="stochastic", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, d)


def test_mnist_checks_the_pair_of_files(root):
    folder = root / "mnist"
    _write_split(folder, "train", n=10)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(ValueError, match="do not form an image set"):
        data.mnist(root, verify=False)


def test_published_tables():
    assert set(data.IDX_SETS) == {"mnist", "fashion"}
    names = {name for pair in data.IDX_FILES.values() for name in pair}
    assert names == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz"}
    for info in data.IDX_SETS.values():
        assert set(info["checksums"]) == names
        assert all(len(s) == 32 and int(s, 16) >= 0 for s in info["checksums"].values())
        assert info["mirrors"] and all(m.startswith(("https://", "http://")) and m.endswith("/")
                                       for m in info["mirrors"])
    assert data.IDX_SETS["mnist"]["mirrors"][0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert data.IDX_SETS["fashion"]["mirrors"][0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert data.IDX_SETS["mnist"]["checksums"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "here"))
    assert data.data_root() == tmp_path / "here"
    assert data.data_root(tmp_path / "there") == tmp_path / "there"
    monkeypatch.delenv(data.DATA_ENV)
    assert data.data_root() == Path.home() / ".cache" / "coursepkg"


@pytest.mark.parametrize("call, message", [
    (lambda: data.mnist(kind="kmnist"), "unknown kind 'kmnist'"),
    (lambda: data.mnist(split="valid"), "unknown split 'valid'"),
    (lambda: data.mnist(binarize=True), "binarize must be False, 'threshold' or 'stochastic'"),
    (lambda: data.mnist(binarize="bernoulli"), "binarize must be"),
])
def test_mnist_bad_input_is_a_clear_error(root, call, message):
    with pytest.raises(ValueError, match=message):
        call()


class _FakeMirrors:
    """Stands in for urllib.request.urlopen: serves bytes by URL prefix, fails for the others."""

    def __init__(self, serve):
        self.serve, self.calls = serve, []

    def __call__(self, url, timeout=None):
        self.calls.append(url)
        for prefix, payload in self.serve.items():
            if url.startswith(prefix):
                return io.BytesIO(payload)
        raise urllib.error.URLError("connection refused (fake)")


def _payloads(split="train"):
    images, labels = _fake_set(10)
    return {name: _idx_bytes(array) for name, array in zip(data.IDX_FILES[split], (images, labels), strict=True)}


def test_download_tries_the_mirrors_in_order(root, monkeypatch):
    payloads = _payloads("train")
    sums = {name: hashlib.sha256(p).hexdigest() for name, p in payloads.items()}
    dead, good = data.IDX_SETS["fashion"]["mirrors"][:2]  # the real mirror list; the first is down
    fake = _FakeMirrors({good + name: p for name, p in payloads.items()})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    x, y = data.fashion_mnist(root, download=True, checksums=sums)
    assert x.shape == (10, 784) and y.tolist() == list(range(10))
    assert fake.calls == [m + name for name in payloads for m in (dead, good)]
    folder = root / "fashion_mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)  # no temporary files left
    assert all((folder / name).read_bytes() == p for name, p in payloads.items())
    # present and intact: nothing is fetched again
    fake.calls.clear()
    data.fashion_mnist(root, download=True, checksums=sums)
    assert fake.calls == []


def test_download_rejects_corrupt_bytes(root, monkeypatch):
    payloads = _payloads("test")
    sums = {name: hashlib.md5(p).hexdigest() for name, p in payloads.items()}
    corrupt = {name: p[:-7] for name, p in payloads.items()}
    mirrors = ["https://bad.example/data/", "https://worse.example/data"]
    fake = _FakeMirrors({m.rstrip("/") + "/" + name: p for m in mirrors for name, p in corrupt.items()})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(RuntimeError, match="could not download t10k-images-idx3-ubyte.gz") as err:
        data.mnist(root, split="test", download=True, checksums=sums, mirrors=mirrors)
    message = str(err.value)
    assert message.count("checksum mismatch") == 2 and "https://worse.example/data/t10k-images" in message
    assert list((root / "mnist").iterdir()) == []  # nothing is left behind
    # a corrupt mirror, then a good one
    fake.serve = {mirrors[0] + name: p for name, p in corrupt.items()}
    fake.serve.update({"https://good.example/" + name: p for name, p in payloads.items()})
    x, _ = data.mnist(root, split="test", download=True, checksums=sums, mirrors=[mirrors[0], "https://good.example/"])
    assert x.shape == (10, 784)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(payloads)


def test_download_replaces_a_corrupt_file_and_fails_clearly_offline(root, monkeypatch):
    payloads = _payloads("train")
    sums = {name: hashlib.sha256(p).hexdigest() for name, p in payloads.items()}
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name, p in payloads.items():
        (folder / name).write_bytes(p[:-1])  # damaged copies
    fake = _FakeMirrors({})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(RuntimeError, match="every mirror failed") as err:
        data.mnist(root, download=True, checksums=sums)
    assert "URLError" in str(err.value) and len(fake.calls) == len(data.IDX_SETS["mnist"]["mirrors"])
    assert (folder / "train-images-idx3-ubyte.gz").read_bytes() == payloads["train-images-idx3-ubyte.gz"][:-1]
    fake.serve = {data.IDX_SETS["mnist"]["mirrors"][0] + name: p for name, p in payloads.items()}
    assert data.mnist(root, download=True, checksums=sums)[0].shape == (10, 784)
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)
