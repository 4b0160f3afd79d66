"""Independent NumPy implementations used as test oracles.

Written from the README's "The filter" table directly, element by element, without
sharing code with the library.
"""

from __future__ import annotations

import math

import numpy as np


def kalman_filter_reference(g, m, v, count, *, b1, b2, eta, gamma, warmup, kappa):
    """The filter F on float64 (or complex128) arrays, one element at a time.

    For complex gradients the natural generalization: the spike test compares the
    modulus |g - m_hat| with sqrt(v_hat), v being the EMA of |g|^2 (real); a spike is
    clipped along d / |d|, keeping its phase; the gain acts on the modulus.
    """
    kind = np.complex128 if np.iscomplexobj(g) or np.iscomplexobj(m) else np.float64
    g = np.asarray(g, kind)
    m = np.broadcast_to(np.asarray(m, kind), g.shape)
    v = np.broadcast_to(np.real(np.asarray(v)).astype(np.float64), g.shape)
    out = np.empty_like(g)
    spikes = np.zeros(g.shape, bool)
    for idx in np.ndindex(g.shape):
        gi, mi, vi = g[idx], m[idx], v[idx]
        if count < warmup or count == 0 or vi == 0 or gi == 0 or np.isnan(gi):
            out[idx] = gi
            continue
        m_hat = mi / (1 - b1**count)
        v_hat = vi / (1 - b2**count)
        s = math.sqrt(v_hat)
        rho = min(0.9999, (1 - b1) * (1 + b1**count) / ((1 + b1) * (1 - b1**count)))
        sigma2 = max(max(v_hat - abs(m_hat) ** 2, 0.0) / (1 - rho), kappa * v_hat)
        d = gi - m_hat
        if abs(d) > gamma * s:
            out[idx] = m_hat + d / abs(d) * gamma * s  # copysign(gamma * s, d) when real
            spikes[idx] = True
        else:
            gain = 1.0 if d == 0 else max(eta, 1 - sigma2 / abs(d) ** 2)
            out[idx] = gi - (1 - gain) * d
    return out, spikes


def adam_with_filter_reference(grads, *, lr, b1, b2, eps, filter_kwargs):
    """Fused filtered Adam in NumPy over a list of gradient arrays; returns the updates."""
    m = np.zeros_like(grads[0], np.complex128 if np.iscomplexobj(grads[0]) else np.float64)
    v = np.zeros(np.shape(grads[0]), np.float64)
    updates = []
    for t, g in enumerate(grads):
        gf, _ = kalman_filter_reference(g, m, v, t, b1=b1, b2=b2, **filter_kwargs)
        m = b1 * m + (1 - b1) * gf
        v = b2 * v + (1 - b2) * np.abs(gf) ** 2
        c = t + 1
        updates.append(-lr * (m / (1 - b1**c)) / (np.sqrt(v / (1 - b2**c)) + eps))
    return updates
