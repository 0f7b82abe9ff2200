"""The layer below everything else: lending a model, input and number checks, one atomic
file write, and the provenance of a run. It imports nothing from the rest of robustkit
(except :mod:`robustkit.errors`), so every other module may import it.
"""

from robustkit.core.checks import (check_eps, check_inputs, check_labels, check_name,
                                   check_positive_int)
from robustkit.core.device import amp_dtype_for, cpu_has_native_bf16, pick_device
from robustkit.core.io import (check_writable, check_writable_dir, read_json, sha256,
                               write_atomic, write_json)
from robustkit.core.lending import (accuracy_of, as_logits, borrowed, model_contract,
                                    model_device, model_dtype, modes_kept, predict)
from robustkit.core.provenance import __version__, git_commit, versions

__all__ = ["__version__", "accuracy_of", "amp_dtype_for", "as_logits", "borrowed",
           "check_eps", "check_inputs", "check_labels", "check_name", "check_positive_int",
           "check_writable", "check_writable_dir", "cpu_has_native_bf16", "git_commit",
           "model_contract", "model_device", "model_dtype", "modes_kept", "pick_device",
           "predict", "read_json", "sha256", "versions", "write_atomic", "write_json"]
