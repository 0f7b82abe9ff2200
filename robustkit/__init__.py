"""robustkit: adversarial robustness and interpretability for PyTorch.

The public API is flat: ``robustkit.data``, ``robustkit.models``, ``robustkit.train``.
"""

__version__ = "0.1.0"

from robustkit import data, models  # noqa: E402
from robustkit.errors import RobustkitError  # noqa: E402
from robustkit.train import fit  # noqa: E402

__all__ = ["RobustkitError", "__version__", "data", "fit", "models"]
