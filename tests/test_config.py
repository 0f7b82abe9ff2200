"""Typed configs: TOML -> dataclasses, with errors that name the field by its dotted path."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from robustkit.config import TrainConfig, from_dict, load_toml
from robustkit.errors import RobustkitError


@dataclass(frozen=True)
class ExperimentConfig:
    """A nested config, as experiments will have: a table inside a table."""

    name: str
    train: TrainConfig = field(default_factory=TrainConfig)
    eps: list[float] = field(default_factory=list)
    hidden: tuple[int, ...] = ()
    seed: int | None = None


def test_from_dict_builds_the_dataclass():
    cfg = from_dict(TrainConfig, {"epochs": 3, "lr": 0.1, "loss": "mse"})
    assert cfg == TrainConfig(epochs=3, lr=0.1, loss="mse")


def test_unknown_key_names_the_dotted_path_and_lists_valid_keys():
    with pytest.raises(RobustkitError, match=r"^train\.epoch: unknown key; valid keys: ") as info:
        from_dict(TrainConfig, {"epoch": 3})
    assert "epochs" in str(info.value) and "batch_size" in str(info.value)


def test_unknown_nested_key_names_the_full_path():
    with pytest.raises(RobustkitError, match=r"^experiment\.train\.learning_rate: unknown key"):
        from_dict(ExperimentConfig, {"name": "x", "train": {"learning_rate": 0.1}})


@pytest.mark.parametrize("data,match", [
    ({"epochs": "3"}, r"^train\.epochs: expected int, got '3'"),
    ({"epochs": 2.5}, r"^train\.epochs: expected int"),
    ({"epochs": True}, r"^train\.epochs: expected int"),
    ({"lr": "fast"}, r"^train\.lr: expected a number, got 'fast'"),
    ({"lr": True}, r"^train\.lr: expected a number"),
    ({"loss": 1}, r"^train\.loss: expected str"),
])
def test_wrong_types_name_the_field(data, match):
    with pytest.raises(RobustkitError, match=match):
        from_dict(TrainConfig, data)


def test_wrong_types_in_nested_and_list_fields_name_the_path():
    with pytest.raises(RobustkitError, match=r"^experiment\.train\.batch_size: expected int"):
        from_dict(ExperimentConfig, {"name": "x", "train": {"batch_size": "big"}})
    with pytest.raises(RobustkitError, match=r"^experiment\.eps\[1\]: expected a number"):
        from_dict(ExperimentConfig, {"name": "x", "eps": [0.1, "0.2"]})
    with pytest.raises(RobustkitError, match=r"^experiment\.eps: expected a list"):
        from_dict(ExperimentConfig, {"name": "x", "eps": 0.1})
    with pytest.raises(RobustkitError, match=r"^experiment\.train: expected a table"):
        from_dict(ExperimentConfig, {"name": "x", "train": 5})


def test_ints_are_accepted_for_floats():
    cfg = from_dict(TrainConfig, {"lr": 1, "weight_decay": 0})
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.weight_decay == 0.0 and type(cfg.weight_decay) is float
    exp = from_dict(ExperimentConfig, {"name": "x", "eps": [0, 1, 0.5]})
    assert exp.eps == [0.0, 1.0, 0.5] and all(type(e) is float for e in exp.eps)


def test_nested_tuples_and_optionals():
    exp = from_dict(ExperimentConfig, {"name": "x", "hidden": [64, 32], "seed": None,
                                       "train": {"epochs": 2}})
    assert exp.hidden == (64, 32) and exp.seed is None and exp.train.epochs == 2
    assert from_dict(ExperimentConfig, {"name": "x", "seed": 7}).seed == 7
    with pytest.raises(RobustkitError, match=r"^experiment\.seed: expected int"):
        from_dict(ExperimentConfig, {"name": "x", "seed": "7"})


def test_invalid_values_name_the_field_with_its_path():
    with pytest.raises(RobustkitError, match=r"^train\.epochs: must be positive, got 0"):
        from_dict(TrainConfig, {"epochs": 0})
    with pytest.raises(RobustkitError, match=r"^experiment\.train\.lr: learning rate must be positive"):
        from_dict(ExperimentConfig, {"name": "x", "train": {"lr": -0.1}})


@pytest.mark.parametrize("data,match", [
    ({"lr": float("inf")}, r"^train\.lr: learning rate must be positive and finite, got inf"),
    ({"lr": float("nan")}, r"^train\.lr: learning rate must be positive and finite"),
    ({"weight_decay": float("inf")}, r"^train\.weight_decay: must be finite and >= 0"),
    ({"weight_decay": float("nan")}, r"^train\.weight_decay: must be finite and >= 0"),
    ({"label_smoothing": float("nan")}, r"^train\.label_smoothing: must be in \[0, 1\)"),
    ({"batch_size": 0}, r"^train\.batch_size: must be positive"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(data, match):
    with pytest.raises(RobustkitError, match=match):
        from_dict(TrainConfig, data)


def test_missing_required_field_and_non_table():
    with pytest.raises(RobustkitError, match=r"^experiment\.name: required, but missing"):
        from_dict(ExperimentConfig, {})
    with pytest.raises(RobustkitError, match=r"^train: expected a table, got list"):
        from_dict(TrainConfig, [1, 2])


def test_load_toml_reads_a_config(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('name = "demo"\nhidden = [8]\n\n[train]\nepochs = 2\nlr = 1\nloss = "mse"\n')
    exp = from_dict(ExperimentConfig, load_toml(path))
    assert exp == ExperimentConfig(name="demo", hidden=(8,),
                                   train=TrainConfig(epochs=2, lr=1.0, loss="mse"))


def test_load_toml_malformed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nepochs = = 3\n")
    with pytest.raises(RobustkitError, match="is not valid TOML") as info:
        load_toml(path)
    assert str(path) in str(info.value)


def test_load_toml_missing(tmp_path):
    with pytest.raises(RobustkitError, match="does not exist") as info:
        load_toml(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
