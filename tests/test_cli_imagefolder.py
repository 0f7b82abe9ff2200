"""The attack commands stream an image folder: the chosen test images are read one at a
time, never loaded whole, and the numbers equal those on the same images as tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from robustkit import data
from robustkit.cli import main


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 12)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200), (40, 200, 40))):
            d = tmp_path / "imgs" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 30, (10, 10, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return f"imagefolder:{tmp_path / 'imgs'}?size=8"


def test_attack_curve_and_validity_stream_an_image_folder(folder, tmp_path, monkeypatch):
    model = tmp_path / "m.pt"
    assert main(["train", "--model", "logistic", "--dataset", folder, "--epochs", "3",
                 "--out", str(model), "--quiet"]) == 0
    loaded = []
    real = data.load_tensors

    def spy(name, *args, **kwargs):
        loaded.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(data, "load_tensors", spy)
    out = tmp_path / "a.json"
    common = ["--checkpoint", str(model), "--dataset", folder, "--images", "30", "--quiet"]
    assert main(["attack", *common, "--eps", "0.1", "--steps", "3", "--out", str(out)]) == 0
    assert main(["curve", *common, "--eps", "0.05,0.1", "--steps", "3"]) == 0
    assert main(["validity", *common, "--steps", "2"]) == 0
    assert loaded == []  # streamed: the folder was never loaded as one tensor
    record = json.loads(out.read_text())
    assert record["n"] == 30
    assert record["robust_accuracy"] <= record["clean_accuracy"]
    assert record["clean_accuracy"] > 0.5  # the colours are learnable
