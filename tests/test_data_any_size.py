"""Data of any size: image folders read as [0, 1] tensors or streamed one image at a time,
``data.dataset`` for every dataset, mnist-5k's shuffled stratified splits, and ``fit`` on
tensors, a Dataset or a DataLoader.

The image folders are tiny PNG files these tests write with PIL; nothing is downloaded.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import (DataLoader, Dataset, IterableDataset, SequentialSampler, Subset,
                              TensorDataset)

from robustkit import data, models, snapshot
from robustkit.core import stream
from robustkit.errors import RobustkitError
from robustkit.train import fit, train_and_save

QUIET = {"quiet": True, "device": "cpu", "amp": False}

# --------------------------------------------------------------------------- image folders


def _png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` (H, W, 3) or (H, W) uint8 as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _pixels(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = 8) -> dict:
    """``root/CLASS/i.png`` for each class, ``classes[CLASS]`` random images each.

    Returns {relative path: pixels (H, W, 3)}.
    """
    written = {}
    for k, (c, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            pixels = _pixels(1000 * seed + 100 * k + i, size, size)
            _png(root / c / f"{i}.png", pixels)
            written[f"{c}/{i}.png"] = pixels
    return written


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict, dict]:
    """An image folder with train/ (cat 3, dog 4) and test/ (cat 2, dog 2) of 8x8 PNGs."""
    root = tmp_path / "pets"
    train = write_folder(root / "train", {"cat": 3, "dog": 4}, seed=1)
    test = write_folder(root / "test", {"cat": 2, "dog": 2}, seed=2)
    return root, train, test


def test_imagefolder_loads_unit_rgb_images_with_labels_by_folder(folder):
    root, train, test = folder
    name = f"imagefolder:{root}?size=8"
    ds = data.spec(name)
    assert ds.in_shape == (3, 8, 8) and ds.num_classes == 2 and ds.classes == ("cat", "dog")
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.5, 0.5, 0.5)
    for split, written in (("train", train), ("test", test)):
        x, y = data.load_tensors(name, split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(written), 3, 8, 8)
        assert 0 <= x.min() and x.max() <= 1
        # In torchvision ImageFolder's order: by class, then by file name.
        expected = [written[k] for k in sorted(written)]
        assert y.tolist() == [0 if k.startswith("cat") else 1 for k in sorted(written)]
        # An 8x8 image at size 8 is not resampled: pixels are exactly v / 255.
        want = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(x, want)


def test_imagefolder_order_and_labels_are_torchvision_imagefolders(folder):
    root, _, _ = folder
    ours = data.dataset(f"imagefolder:{root}?size=8", "train")
    theirs = torchvision.datasets.ImageFolder(str(root / "train"))
    assert ours.samples == theirs.samples and ours.targets == theirs.targets
    assert list(ours.classes) == theirs.classes


def test_the_default_size_is_224():
    assert data.IMAGEFOLDER_SIZE == 224


def test_default_size_and_options_in_the_name(folder):
    root, _, _ = folder
    assert data.spec(f"imagefolder:{root}").in_shape == (3, 224, 224)
    assert data.spec(f"imagefolder:{root}?size=5&resize=9").in_shape == (3, 5, 5)
    # A "?" that is not followed by key=value pairs is part of the path.
    odd = root.parent / "what?ever"
    write_folder(odd, {"a": 1})
    assert data.spec(f"imagefolder:{odd}?size=4").classes == ("a",)


def _reference(img: Image.Image, size: int, resize: int) -> torch.Tensor:
    t = torchvision.transforms
    return t.Compose([t.Resize(resize), t.CenterCrop(size), t.ToTensor()])(img.convert("RGB"))


@pytest.mark.parametrize("size,resize", [(10, 10), (6, 10), (12, 12)])
def test_resize_then_center_crop_is_torchvisions(tmp_path, size, resize):
    root = tmp_path / "f"
    pixels = _pixels(5, 20, 40)  # H 20, W 40: not square
    _png(root / "a" / "wide.png", pixels)
    _png(root / "a" / "tall.png", _pixels(6, 30, 14))
    x, _ = data.load_tensors(f"imagefolder:{root}?size={size}&resize={resize}", "test")
    assert x.shape == (2, 3, size, size)
    for i, f in enumerate(["tall.png", "wide.png"]):
        want = _reference(Image.open(root / "a" / f), size, resize)
        assert torch.allclose(x[i], want, atol=0)  # both are uint8 / 255


def test_center_crop_keeps_the_middle(tmp_path):
    # 16 x 32: red left and right quarters, blue middle half; size 8 keeps only blue.
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :8, 0] = pixels[:, 24:, 0] = 255
    pixels[:, 8:24, 2] = 255
    _png(tmp_path / "f" / "a" / "img.png", pixels)
    x, _ = data.load_tensors(f"imagefolder:{tmp_path / 'f'}?size=8", "test")
    assert x.shape == (1, 3, 8, 8)
    assert x[0, 2, :, 1:-1].min() > 0.9 and x[0, 0, :, 1:-1].max() < 0.1


def test_grayscale_images_become_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    _png(tmp_path / "f" / "a" / "g.png", gray)
    x, _ = data.load_tensors(f"imagefolder:{tmp_path / 'f'}?size=8", "test")
    for c in range(3):
        assert torch.equal(x[0, c], torch.from_numpy(gray).float() / 255)


def test_val_is_the_test_split_when_there_is_no_test_folder(tmp_path):
    write_folder(tmp_path / "f" / "train", {"a": 2, "b": 2})
    write_folder(tmp_path / "f" / "val", {"a": 1, "b": 1}, seed=3)
    x, y = data.load_tensors(f"imagefolder:{tmp_path / 'f'}?size=8", "test")
    assert y.tolist() == [0, 1]
    write_folder(tmp_path / "f" / "test", {"a": 3}, seed=4)  # test/ wins over val/
    x, y = data.load_tensors(f"imagefolder:{tmp_path / 'f'}?size=8", "test")
    assert y.tolist() == [0, 0, 0]


def test_labels_mean_the_same_class_in_both_splits(tmp_path):
    # The test split lacks "b": "c" must still be label 2 there.
    write_folder(tmp_path / "f" / "train", {"a": 1, "b": 1, "c": 1})
    write_folder(tmp_path / "f" / "test", {"a": 1, "c": 2})
    name = f"imagefolder:{tmp_path / 'f'}?size=8"
    assert data.spec(name).classes == ("a", "b", "c")
    assert data.load_tensors(name, "test")[1].tolist() == [0, 2, 2]


def test_a_flat_folder_is_a_test_split_only(tmp_path):
    write_folder(tmp_path / "f", {"a": 2, "b": 1})
    name = f"imagefolder:{tmp_path / 'f'}?size=8"
    assert data.load_tensors(name, "test")[1].tolist() == [0, 0, 1]
    with pytest.raises(RobustkitError, match="no train split.*test split only"):
        data.load_tensors(name, "train")


def test_hidden_files_and_folders_are_skipped_and_other_files_warned_about(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 2})
    _png(root / ".ipynb_checkpoints" / "x.png", _pixels(0))  # not a class
    (root / "a" / "._0.png").write_bytes(b"AppleDouble junk")  # hidden: skipped silently
    (root / "a" / "notes.txt").write_text("not an image")
    name = f"imagefolder:{root}?size=8"
    assert data.spec(name).classes == ("a",)
    with pytest.warns(UserWarning, match="skipped 1 file.*notes.txt"):
        x, y = data.load_tensors(name, "test")
    assert len(y) == 2


@pytest.mark.parametrize("layout,match", [
    ("missing", "no such folder"),
    ("file", "is not a folder"),
    ("empty", "holds no class folders"),
    ("no-images", "class folder .*b holds no images"),
    ("broken", "b/bad.png is not a readable image"),
    ("empty-split", "test holds no class folders"),
])
def test_bad_image_folders_are_refused_with_a_clear_message(tmp_path, layout, match):
    root = tmp_path / "f"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "no-images":
        write_folder(root, {"a": 1})
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("no pictures here")
    elif layout == "broken":
        write_folder(root, {"a": 1})
        (root / "b").mkdir()
        (root / "b" / "bad.png").write_bytes(b"this is not a PNG file")
    elif layout == "empty-split":
        write_folder(root / "train", {"a": 1})
        (root / "test").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped readme
        with pytest.raises(RobustkitError, match=match) as info:
            data.load_tensors(f"imagefolder:{root}?size=8", "test")
    assert str(root) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("options,match", [
    ("size=abc", "option 'size=abc' is not size=N"),
    ("size=0", "1 <= size <= resize"),
    ("size=8&resize=4", "1 <= size <= resize"),
    ("colour=1", "option 'colour=1'"),
])
def test_bad_options_are_refused(folder, options, match):
    root, _, _ = folder
    with pytest.raises(RobustkitError, match=match):
        data.spec(f"imagefolder:{root}?{options}")


def test_an_imagefolder_without_a_path_and_unknown_names_say_how(tmp_path):
    with pytest.raises(RobustkitError, match="name a folder"):
        data.spec("imagefolder:")
    with pytest.raises(RobustkitError, match="imagefolder:PATH"):
        data.spec("imagenet")


def test_train_size_of_an_imagefolder_is_a_stratified_subset_read_alone(tmp_path, monkeypatch):
    write_folder(tmp_path / "f" / "train", {"a": 4, "b": 4, "c": 4})
    name = f"imagefolder:{tmp_path / 'f'}?size=8"
    read = []
    real = data.ImageFolderData.read_uint8
    monkeypatch.setattr(data.ImageFolderData, "read_uint8",
                        lambda self, i: read.append(i) or real(self, i))
    x, y = data.load_tensors(name, "train", train_size=6, seed=1)
    assert sorted(torch.bincount(y).tolist()) == [2, 2, 2] and len(read) == 6
    sub = data.dataset(name, "train", train_size=6, seed=1)
    assert isinstance(sub, Subset) and len(sub) == 6
    assert torch.equal(torch.stack([sub[i][0] for i in range(6)]), x)


# --------------------------------------------------------------------------- data.dataset


def test_dataset_of_an_imagefolder_reads_one_image_per_item(folder, monkeypatch):
    root, train, _ = folder
    name = f"imagefolder:{root}?size=8"
    ds = data.dataset(name, "train")
    assert isinstance(ds, data.ImageFolderData) and len(ds) == len(train)
    reads = []
    real = data.ImageFolderData.read_uint8
    monkeypatch.setattr(data.ImageFolderData, "read_uint8",
                        lambda self, i: reads.append(i) or real(self, i))
    image, label = ds[4]
    assert reads == [4]  # nothing else was read
    assert image.dtype == torch.float32 and image.shape == (3, 8, 8) and type(label) is int
    assert label == 1
    pickle.loads(pickle.dumps(ds))  # DataLoader workers get their own copy


@pytest.mark.parametrize("split", data.SPLITS)
def test_dataset_streams_what_load_tensors_holds(folder, split):
    root, _, _ = folder
    for name in ("mnist-5k", f"imagefolder:{root}?size=8"):
        x, y = data.load_tensors(name, split)
        ds = data.dataset(name, split)
        assert len(ds) == len(y)
        if name == "mnist-5k":
            assert isinstance(ds, TensorDataset)
        got = list(stream.batches(ds, 3, what="test"))
        assert torch.equal(torch.cat([b.x for b in got]), x)
        assert torch.equal(torch.cat([b.y for b in got]), y)


def test_dataset_refuses_an_unknown_split_and_a_test_train_size(folder):
    root, _, _ = folder
    with pytest.raises(RobustkitError, match="split"):
        data.dataset("mnist-5k", "validation")
    with pytest.raises(RobustkitError, match="train split only"):
        data.dataset(f"imagefolder:{root}?size=8", "test", train_size=2)
    with pytest.raises(RobustkitError, match="train_size must be between 1 and 7"):
        data.dataset(f"imagefolder:{root}?size=8", "train", train_size=8)


# --------------------------------------------------------------------------- mnist-5k order


def test_mnist_5k_is_shuffled_and_still_stratified():
    x, y = data.load_tensors("mnist-5k", "test")
    x_train, y_train = data.load_tensors("mnist-5k", "train")
    assert len(y) == 1000 and len(y_train) == 4000
    assert torch.bincount(y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(y_train, minlength=10).tolist() == [400] * 10
    for labels in (y, y_train):
        assert not torch.equal(labels, labels.sort().values)  # not sorted by class
        assert len(set(labels[:16].tolist())) >= 5  # x[:16] is a mix of digits
    again = data.load_tensors("mnist-5k", "test")
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_mnist_5k_is_the_same_when_parsed_again(tmp_path, monkeypatch):
    cached = data.load_tensors("mnist-5k", "test")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "new-cache"))  # parse the CSV anew
    fresh = data.load_tensors("mnist-5k", "test")
    assert torch.equal(fresh[0], cached[0]) and torch.equal(fresh[1], cached[1])


def _sorted_cache(path: Path, version: int | None) -> None:
    """A cache of the old layout: the CSV order, test rows by class (labels sorted)."""
    y = np.repeat(np.arange(10), 500)
    x = np.zeros((5000, 1, 28, 28), dtype=np.uint8)
    is_test = np.zeros(5000, dtype=bool)
    is_test[np.arange(10) * 500] = True
    arrays = {"x": x, "y": y, "is_test": is_test}
    if version is not None:  # a file of another version under the new name
        arrays |= {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test),
                   "version": np.array(version)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


@pytest.mark.parametrize("where", ["old-name", "new-name-old-version"])
def test_an_old_sorted_cache_is_not_reused(tmp_path, monkeypatch, where):
    good = data.load_tensors("mnist-5k", "test")
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(cache))
    if where == "old-name":
        _sorted_cache(cache / "mnist_5k_v1.npz", None)
        assert data._CACHE_VERSION != 1
    else:
        _sorted_cache(cache / f"mnist_5k_v{data._CACHE_VERSION}.npz", 1)
    x, y = data.load_tensors("mnist-5k", "test")
    assert torch.equal(x, good[0]) and torch.equal(y, good[1])
    with np.load(cache / f"mnist_5k_v{data._CACHE_VERSION}.npz") as f:
        assert int(f["version"]) == data._CACHE_VERSION


# --------------------------------------------------------------------------- fit on any data


class Pairs(Dataset):
    """A plain map-style Dataset over tensors: items (image (C, H, W), int label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.reads = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], int(self.y[i])


@pytest.fixture
def small(mnist_1000):
    x, y = mnist_1000["train"]
    xt, yt = mnist_1000["test"]
    return (x[:320], y[:320]), (xt[:100], yt[:100])


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", hidden=(16,), dropout=0.2)


FIT = dict(epochs=2, batch_size=32, lr=0.05, augment="shift", seed=3, **QUIET)
ADV = {"method": "fgsm-rs", "eps": 0.1, "guard_size": 40}


def _fit(train, test, **kw):
    model = _model()
    history = fit(model, train, test, **{**FIT, **kw})
    return model.state_dict(), history


def _same(a, b) -> bool:
    weights = all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    drop = ("seconds",)
    records = [{k: v for k, v in e.items() if k not in drop} for e in a[1].epochs] == \
        [{k: v for k, v in e.items() if k not in drop} for e in b[1].epochs]
    return weights and records and a[1].held_out == b[1].held_out


@pytest.mark.parametrize("adversarial", [None, ADV], ids=["standard", "adversarial-guard"])
def test_tensors_tensordataset_and_a_dataset_of_them_train_identically(small, adversarial):
    # Bit for bit: fit draws the same order from its seed and holds out the same images,
    # whether the examples come as tensors, a TensorDataset or any Dataset of them.
    (x, y), (xt, yt) = small
    tensors = _fit((x, y), (xt, yt), adversarial=adversarial)
    assert _same(tensors, _fit(TensorDataset(x, y), TensorDataset(xt, yt),
                               adversarial=adversarial))
    assert _same(tensors, _fit(Pairs(x, y), Pairs(xt, yt), adversarial=adversarial))
    if adversarial:
        assert tensors[1].held_out == 40


def test_a_dataloader_trains_sanely_and_a_seeded_one_repeats(small):
    (x, y), (xt, yt) = small

    def run():
        loader = DataLoader(Pairs(x, y), batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(5))
        return _fit(loader, DataLoader(Pairs(xt, yt), batch_size=50), epochs=3,
                    augment="none")

    a, b = run(), run()
    assert _same(a, b)
    history = a[1]
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert history.final_test_accuracy > 0.3  # chance is 0.1
    # Its test accuracy is that of the final model on the test images.
    model = _model()
    model.load_state_dict(a[0])
    from robustkit.core import accuracy_of
    assert history.final_test_accuracy == accuracy_of(model.eval(), xt, yt)


def test_fit_on_a_dataset_never_holds_more_than_a_batch_before_training(small, monkeypatch):
    import robustkit.train as train_module

    (x, y), _ = small
    ds = Pairs(x, y)
    at_first_step = []
    real = train_module._train_step

    def step(run, xb, yb, *args, **kwargs):
        if not at_first_step:
            at_first_step.append(ds.reads)
        return real(run, xb, yb, *args, **kwargs)

    monkeypatch.setattr(train_module, "_train_step", step)
    fit(_model(), ds, epochs=1, batch_size=32, **QUIET)
    assert at_first_step[0] <= 1 + 32  # the probe, then one batch
    assert ds.reads == 1 + len(y)  # one epoch reads each example once


def test_fit_trains_on_an_imagefolder_dataset(tmp_path):
    # Red images are class "red", blue ones "blue": learnable in a few steps.
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for c, channel in (("blue", 2), ("red", 0)):
            for i in range(n):
                pixels = rng.integers(0, 60, (6, 6, 3), dtype=np.uint8)
                pixels[..., channel] += 180
                _png(tmp_path / "f" / split / c / f"{i}.png", pixels)
    name = f"imagefolder:{tmp_path / 'f'}?size=6"
    spec = data.spec(name)
    torch.manual_seed(0)
    model = models.create("mlp", spec.in_shape, spec.num_classes, spec.mean, spec.std,
                          hidden=(8,))
    history = fit(model, data.dataset(name, "train"), data.dataset(name, "test"), epochs=4,
                  batch_size=8, lr=0.05, augment="none", **QUIET)
    assert history.final_test_accuracy == 1.0


def test_train_and_save_streams_an_imagefolder(tmp_path, monkeypatch):
    write_folder(tmp_path / "f" / "train", {"a": 12, "b": 12}, size=6)
    write_folder(tmp_path / "f" / "test", {"a": 4, "b": 4}, seed=9, size=6)
    name = f"imagefolder:{tmp_path / 'f'}?size=6"

    def never(*args, **kwargs):
        raise AssertionError("an image folder must not be loaded whole")

    monkeypatch.setattr(data, "load_tensors", never)
    out = tmp_path / "m.pt"
    _, history = train_and_save("mlp", name, out, options={"hidden": [4]}, train_size=20,
                                config=None, device="cpu", amp=False)
    meta = models.load(out).robustkit_metadata
    assert meta["dataset"] == name and meta["train_size"] == 20
    assert 0 <= history.final_test_accuracy <= 1


def _bad_image(x, y, i):
    x = x.clone()
    x[i, 0, 3, 3] = float("nan")
    return x, y


def _bad_label(x, y, i):
    y = y.clone()
    y[i] = 10
    return x, y


def _too_bright(x, y, i):
    x = x.clone()
    x[i] *= 2
    return x, y


@pytest.mark.parametrize("spoil,match", [
    (_bad_image, "x contains NaN or Inf"),
    (_bad_label, "label out of range"),
    (_too_bright, "must lie in \\[0, 1\\]"),
], ids=["nan", "label", "range"])
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("where", [0, 200], ids=["first", "later"])
def test_bad_batches_of_a_dataset_are_refused_as_tensors_are(small, spoil, match, split, where):
    (x, y), (xt, yt) = small
    if split == "test":
        where = min(where, len(yt) - 1)
    good = {"train": (x, y), "test": (xt, yt)}
    good[split] = spoil(*good[split], where)
    with pytest.raises(RobustkitError, match=match) as from_tensors:
        fit(_model(), good["train"], good["test"], epochs=1, batch_size=32, **QUIET)
    for wrap in (lambda p: Pairs(*p), lambda p: DataLoader(Pairs(*p), batch_size=16)):
        with pytest.raises(RobustkitError, match=match) as streamed:
            fit(_model(), wrap(good["train"]), wrap(good["test"]), epochs=1, batch_size=32,
                **QUIET)
        # The same message; the spans it quotes are the batch's rather than the whole data's.
        assert _spans(str(streamed.value)) == _spans(str(from_tensors.value))
        assert str(streamed.value).startswith(f"fit: {split}: ")


def _spans(message: str) -> str:
    return re.sub(r"\[[^\]]*\]", "[...]", message)


class Odd(Dataset):
    def __init__(self, item, n=4):
        self.item, self.n = item, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.rand(1, 28, 28), 0


@pytest.mark.parametrize("train,match", [
    (Odd((torch.rand(1, 28, 28), 1, 2)), "\\(image, label\\) pairs, got a tuple of 3"),
    (Odd((Image.new("RGB", (28, 28)), 1)), "images must be tensors.*ToTensor"),
    (Odd((torch.rand(1, 28, 28), 0.5)), "y must hold integer labels"),
    (Odd((torch.rand(1, 28, 28), 1), n=0), "train is empty"),
    (Stream(), "IterableDataset .*DataLoader"),
    (DataLoader(Stream(), batch_size=2), "DataLoader of unknown length"),
    ({"x": 1}, "an \\(x, y\\) pair of tensors, a TensorDataset, a map-style Dataset"),
], ids=["triple", "pil", "float-label", "empty", "iterable", "iterable-loader", "dict"])
def test_data_fit_cannot_use_is_refused(train, match):
    with pytest.raises(RobustkitError, match=match):
        fit(_model(), train, epochs=1, **QUIET)


def test_the_guard_holds_out_a_stratified_subset_of_a_dataset_but_not_of_a_dataloader(small):
    (x, y), _ = small
    ds = Pairs(x, y)
    history = fit(_model(), ds, epochs=1, batch_size=32, adversarial=ADV, **QUIET)
    assert history.held_out == 40
    # Read once for the labels (no targets attribute), once for the 40 held out, once for
    # the 280 trained on, and the first item as a probe.
    assert ds.reads == 320 + 40 + 280 + 1
    with pytest.raises(RobustkitError, match="guard holds out training images.*DataLoader"):
        fit(_model(), DataLoader(Pairs(x, y), batch_size=32), epochs=1, adversarial=ADV,
            **QUIET)
    fit(_model(), DataLoader(Pairs(x, y), batch_size=32), epochs=1,
        adversarial={**ADV, "guard": False}, **QUIET)


def test_the_held_out_images_are_stratified(small, monkeypatch):
    import robustkit.adversarial as adversarial

    (x, y), _ = small
    held = []
    real = adversarial.Guard.__init__

    def keep(self, cfg, xh, yh, seed=0):
        held.append(yh)
        real(self, cfg, xh, yh, seed)

    monkeypatch.setattr(adversarial.Guard, "__init__", keep)
    fit(_model(), Pairs(x, y), epochs=1, batch_size=32, adversarial=ADV, **QUIET)
    share = torch.bincount(y, minlength=10).double() / len(y) * 40
    got = torch.bincount(held[0], minlength=10).double()
    assert ((got - share).abs() < 1).all()


def test_a_sampler_with_set_epoch_is_told_the_epoch(small):
    (x, y), _ = small
    calls = []

    class Epochs(SequentialSampler):
        def set_epoch(self, epoch):
            calls.append(epoch)

    ds = Pairs(x, y)
    fit(_model(), DataLoader(ds, batch_size=64, sampler=Epochs(ds)), epochs=3, **QUIET)
    assert calls == [0, 1, 2]


def _killed_after_one_epoch(monkeypatch):
    real = snapshot.save

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot, "save", save_then_die)


@pytest.mark.parametrize("make", [
    lambda x, y: Pairs(x, y),
    lambda x, y: DataLoader(Pairs(x, y), batch_size=32, shuffle=True),
    lambda x, y: DataLoader(Pairs(x, y), batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(8)),
], ids=["dataset", "loader-shuffled", "loader-own-generator"])
def test_resume_on_streamed_data_ends_as_an_uninterrupted_run(small, tmp_path, monkeypatch,
                                                               make):
    (x, y), (xt, yt) = small
    settings = dict(epochs=3, adversarial={**ADV, "guard": False})
    whole = _fit(make(x, y), Pairs(xt, yt), **settings)
    path = tmp_path / "m.resume"
    with monkeypatch.context() as m:
        _killed_after_one_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            _fit(make(x, y), Pairs(xt, yt), resume=path, **settings)
    resumed = _fit(make(x, y), Pairs(xt, yt), resume=path, **settings)  # a fresh loader
    assert _same(resumed, whole)


def test_the_resume_fingerprint_tells_data_apart(small, tmp_path, monkeypatch):
    (x, y), _ = small
    path = tmp_path / "m.resume"
    with monkeypatch.context() as m:
        _killed_after_one_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            _fit(Pairs(x, y), None, resume=path)
    with pytest.raises(RobustkitError, match="train_data"):
        _fit((x, y), None, resume=path)  # the same examples as tensors: another run
    with pytest.raises(RobustkitError, match="train_size"):
        _fit(Pairs(x[:160], y[:160]), None, resume=path)
    with pytest.raises(RobustkitError, match="train_data"):
        _fit(DataLoader(Pairs(x, y), batch_size=32), None, resume=path)
    _fit(Pairs(x, y), None, resume=path)  # the same kind and size goes on
