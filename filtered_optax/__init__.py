"""filtered_optax: composable optax optimizers - filter -> moment EMA -> scaled update.

Ships the filtered Adam family (a dynamic gradient filter in front of Adam's moments,
holding no state beyond Adam's), Muon, and SGD+momentum / Adam / AdamW / RMSProp /
AdaBelief rebuilt from the same stages.
"""

import warnings
from typing import Any

from filtered_optax._alias import adabelief as adabelief
from filtered_optax._alias import adam as adam
from filtered_optax._alias import adamw as adamw
from filtered_optax._alias import filtered_adam as filtered_adam
from filtered_optax._alias import filtered_adamw as filtered_adamw
from filtered_optax._alias import rmsprop as rmsprop
from filtered_optax._alias import sgd as sgd
from filtered_optax._describe import Description as Description
from filtered_optax._describe import describe as describe
from filtered_optax._filters import filter_stats as filter_stats
from filtered_optax._filters import identity_filter as identity_filter
from filtered_optax._filters import kalman_filter as kalman_filter
from filtered_optax._filters import kalman_filter_math as kalman_filter_math
from filtered_optax._filters import soft_clip_filter as soft_clip_filter
from filtered_optax._filters import soft_clip_filter_math as soft_clip_filter_math
from filtered_optax._filters import spam_filter as spam_filter
from filtered_optax._filters import spam_filter_math as spam_filter_math
from filtered_optax._filters import zscore_filter as zscore_filter
from filtered_optax._filters import zscore_filter_math as zscore_filter_math
from filtered_optax._moments import WithMomentsState as WithMomentsState
from filtered_optax._moments import belief as belief
from filtered_optax._moments import ema as ema
from filtered_optax._moments import ema_momentum as ema_momentum
from filtered_optax._moments import heavy_ball as heavy_ball
from filtered_optax._moments import second_moment as second_moment
from filtered_optax._moments import with_moments as with_moments
from filtered_optax._monitor import MonitorState as MonitorState
from filtered_optax._monitor import monitor as monitor
from filtered_optax._monitor import read_stats as read_stats
from filtered_optax._muon import muon as muon
from filtered_optax._muon import orthogonal_update as orthogonal_update
from filtered_optax._muon import scale_by_muon as scale_by_muon
from filtered_optax._orthogonal import KELLER_COEFFICIENTS as KELLER_COEFFICIENTS
from filtered_optax._orthogonal import POLAR_EXPRESS_COEFFICIENTS as POLAR_EXPRESS_COEFFICIENTS
from filtered_optax._orthogonal import matrix_view as matrix_view
from filtered_optax._orthogonal import newton_schulz as newton_schulz
from filtered_optax._orthogonal import orthogonalize as orthogonalize
from filtered_optax._paths import path_names as path_names
from filtered_optax._routing import RouteRow as RouteRow
from filtered_optax._routing import Routing as Routing
from filtered_optax._routing import RoutingTable as RoutingTable
from filtered_optax._routing import matrix_spec as matrix_spec
from filtered_optax._routing import muon_labels as muon_labels
from filtered_optax._routing import muon_specs as muon_specs
from filtered_optax._routing import routing_table as routing_table
from filtered_optax._scaling import momentum_output as momentum_output
from filtered_optax._scaling import normalize as normalize
from filtered_optax._scaling import rms_normalize as rms_normalize
from filtered_optax._scaling import sign_update as sign_update
from filtered_optax._sharding import state_shardings as state_shardings
from filtered_optax._trace import TracedDecision as TracedDecision
from filtered_optax._trace import TracedRouting as TracedRouting
from filtered_optax._trace import trace_routing as trace_routing
from filtered_optax._types import FilterResult as FilterResult
from filtered_optax._types import FilterStats as FilterStats
from filtered_optax._types import MatrixSpec as MatrixSpec
from filtered_optax._types import MomentRule as MomentRule
from filtered_optax._types import Moments as Moments

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``fo.MuonState``: deprecated, Muon's state is a :class:`WithMomentsState` since 0.2."""
    if name == "MuonState":
        warnings.warn(
            "fo.MuonState is deprecated: fo.scale_by_muon's state is now a "
            "fo.WithMomentsState (count, mu, nu, filter_state, scale_state); see CHANGELOG.md.",
            DeprecationWarning,
            stacklevel=2,
        )
        return WithMomentsState
    raise AttributeError(f"module 'filtered_optax' has no attribute {name!r}")
