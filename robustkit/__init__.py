"""robustkit: adversarial robustness and interpretability for PyTorch.

The public API is flat: ``robustkit.data``, ``robustkit.models``, ``robustkit.fit``,
``robustkit.attacks``, ``robustkit.metrics``, ``robustkit.evaluate``, ``robustkit.transfer``,
``robustkit.explain``.
"""

from robustkit import (  # noqa: E402
    adversarial, attacks, data, evaluate, explain, metrics, models, transfer,
)
from robustkit import blackbox  # noqa: E402  (Oracle, substitute, transfer_success)
from robustkit.core.provenance import __version__  # noqa: E402
from robustkit.errors import RobustkitError  # noqa: E402
from robustkit.train import fit  # noqa: E402

__all__ = ["RobustkitError", "__version__", "adversarial", "attacks", "blackbox", "data",
           "evaluate", "explain", "fit", "metrics", "models", "transfer"]
