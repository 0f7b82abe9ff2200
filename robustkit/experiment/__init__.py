"""Config-driven, resumable experiment runs: ``robustkit run experiments/NAME.toml``.

- :mod:`~robustkit.experiment.config`: the TOML config, checked whole when it is loaded;
- :mod:`~robustkit.experiment.units`: the kinds of unit (a planner and a compute each);
- :mod:`~robustkit.experiment.context`: what a unit works with (data, models, its section);
- :mod:`~robustkit.store`: finished units, verified when read;
- :mod:`~robustkit.experiment.folder`: the run folder's lock and what robustkit wrote;
- :mod:`~robustkit.experiment.runner`: :func:`run`, which puts them together.
"""

from robustkit.experiment.config import ExperimentConfig, load_experiment
from robustkit.experiment.folder import RunFolder, lock
from robustkit.experiment.runner import run
from robustkit.store import Store

__all__ = ["ExperimentConfig", "RunFolder", "Store", "load_experiment", "lock", "run"]
