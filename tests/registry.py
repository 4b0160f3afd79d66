"""The optimizers every battery test runs on: (name, factory, keyword arguments).

Each factory takes ``learning_rate`` plus numeric keyword arguments, so it can be wrapped
by ``optax.inject_hyperparams``. Muon joins via ``MATRIX_ONLY`` entries once present.
"""

from __future__ import annotations

import filtered_optax as fo

OPTIMIZERS = [
    ("filtered_adam", fo.filtered_adam, {}),
    ("filtered_adam_smoothing", fo.filtered_adam, {"eta": 0.7, "gamma": 3.0, "warmup": 3}),
    ("filtered_adamw", fo.filtered_adamw, {"weight_decay": 1e-3}),
    ("adam", fo.adam, {}),
    ("adamw", fo.adamw, {"weight_decay": 1e-3}),
    ("rmsprop", fo.rmsprop, {}),
    ("adabelief", fo.adabelief, {}),
    ("sgd", fo.sgd, {}),
    ("sgd_momentum", fo.sgd, {"momentum": 0.9}),
    # Muon routes the 2-D leaves to Newton-Schulz and the rest to AdamW.
    ("muon", fo.muon, {"weight_decay": 0.0}),
    ("filtered_muon", fo.muon, {"weight_decay": 0.0, "filter_gamma": 3.0}),
]

# Learning rates for the convergence problems (parabola, Rosenbrock, matrix target):
# plain SGD's step must respect each problem's curvature, unlike the sign-like
# adaptive methods, which all take the default.
CONVERGENCE_LR = {"sgd": (1e-2, 1e-3, 5e-2), "sgd_momentum": (1e-3, 2e-4, 5e-3)}
DEFAULT_CONVERGENCE_LR = (1e-2, 1e-2, 1e-2)

# Which optimizers keep a first moment whose dtype ``mu_dtype`` sets.
MU_DTYPE = {"filtered_adam", "filtered_adam_smoothing", "filtered_adamw", "adam", "adamw"}


def ids():
    return [name for name, _, _ in OPTIMIZERS]
