"""Shared fixtures: an isolated cache and data root, no network, tiny seeded data and models.

The cache folder is one per test session, so the embedded ``mnist-5k`` CSV is parsed once;
the torchvision data root is a fresh empty folder per test, so a test that forgets to write
its files sees "missing" rather than whatever a developer has downloaded.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from robustkit import data, models

# Every test is tiny: one thread avoids oversubscribing the CPU when the suite runs beside
# something else (set here, never in library code).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache folder for the whole session (mnist-5k's parsed ``.npz`` lives here)."""
    return tmp_path_factory.mktemp("robustkit-cache")


@pytest.fixture(autouse=True)
def isolated_env(session_cache, tmp_path_factory, monkeypatch):
    """Point ROBUSTKIT_CACHE and ROBUSTKIT_DATA at temporary folders and forbid the network."""
    data_root = tmp_path_factory.mktemp("robustkit-data")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(session_cache))
    monkeypatch.setenv("ROBUSTKIT_DATA", str(data_root))

    def no_network(*args, **kwargs):
        raise RuntimeError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return {"cache": session_cache, "data": data_root}


@pytest.fixture
def data_root(isolated_env):
    """The (empty) folder that ``$ROBUSTKIT_DATA`` names for this test."""
    return isolated_env["data"]


@pytest.fixture(scope="session")
def subprocess_env(session_cache, tmp_path_factory):
    """Environment for ``python -m robustkit`` subprocesses: same cache, empty data root."""
    env = dict(os.environ)
    env["ROBUSTKIT_CACHE"] = str(session_cache)
    env["ROBUSTKIT_DATA"] = str(tmp_path_factory.mktemp("robustkit-data-subprocess"))
    return env


@pytest.fixture
def mnist_small():
    """256 stratified mnist-5k training images (float32 (256, 1, 28, 28) in [0, 1]) and labels."""
    return data.load_tensors("mnist-5k", "train", train_size=256, seed=0)


@pytest.fixture
def mnist_test_small():
    """The first 200 mnist-5k test images and labels."""
    x, y = data.load_tensors("mnist-5k", "test")
    return x[:200], y[:200]


@pytest.fixture
def tiny_mlp():
    """A seeded MLP small enough to train in milliseconds: 784 -> 16 (tanh) -> 10."""
    torch.manual_seed(0)
    return models.create("mlp", (1, 28, 28), 10, mean=(0.1307,), std=(0.3081,),
                         hidden=(16,), activation="tanh", dropout=0.1)


@pytest.fixture
def tiny_batch():
    """Eight seeded images in [0, 1], (8, 1, 28, 28)."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(8, 1, 28, 28, generator=g)


@pytest.fixture(scope="session")
def mnist_1000(session_cache):
    """1000 stratified mnist-5k training images and the 1000 test images (the test split).

    Session-scoped, so it sets ``ROBUSTKIT_CACHE`` itself (the autouse fixture is per test).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(session_cache))
        train = data.load_tensors("mnist-5k", "train", train_size=1000, seed=0)
        test = data.load_tensors("mnist-5k", "test")
    return {"train": train, "test": test}


@pytest.fixture(scope="session")
def trained_mlp(mnist_1000):
    """An MLP 784 -> 64 (relu) -> 10, trained 3 epochs on 1000 images (about 77% test accuracy).

    In eval mode and shared by the whole session: tests must not change it (attacks promise
    exactly that).
    """
    from robustkit.train import fit

    torch.manual_seed(0)
    model = models.create("mlp", hidden=(64,), dropout=0.0)
    # amp=False: float32 on every CPU, so the weights (and the thresholds tuned on them)
    # do not depend on whether this CPU has native bfloat16.
    fit(model, mnist_1000["train"], epochs=3, batch_size=64, lr=0.01, augment="none",
        device="cpu", amp=False, quiet=True)
    return model.eval()


@pytest.fixture
def bn_cnn():
    """A tiny seeded CNN with BatchNorm, for state checks: (N, 1, 28, 28) -> (N, 10).

    conv (1 -> 4, 3x3, stride 2) -> bn -> relu -> flatten -> dropout -> fc (676 -> 10).
    Its BatchNorm running statistics are non-trivial (a few seeded batches seen).
    """
    from collections import OrderedDict

    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(
        conv=torch.nn.Conv2d(1, 4, 3, stride=2),
        bn=torch.nn.BatchNorm2d(4),
        relu=torch.nn.ReLU(),
        flat=torch.nn.Flatten(),
        drop=torch.nn.Dropout(0.1),
        fc=torch.nn.Linear(4 * 13 * 13, 10),
    ))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 28, 28, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable; skips with what to install when it or Playwright is missing."""
    from robustkit.report.browser import find_chromium

    executable = find_chromium()
    if executable is None:
        pytest.skip("browser check skipped: no Chromium found (tried $ROBUSTKIT_CHROMIUM, "
                    "chromium, chromium-browser, google-chrome); install it with "
                    "`apt-get install -y --no-install-recommends chromium` (.ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser check skipped: the playwright package is not installed; "
                    "`pip install -e '.[test]'` installs it (no `playwright install` needed)")
    return executable
