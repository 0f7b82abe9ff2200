"""Config-driven, resumable experiment runs: ``robustkit run experiments/NAME.toml``."""

from robustkit.experiment.config import ExperimentConfig, load_experiment
from robustkit.experiment.runner import run
from robustkit.experiment.store import Store

__all__ = ["ExperimentConfig", "Store", "load_experiment", "run"]
