"""Exact fast products with A, H, G in 1D, and matrix-free operators.

Owns the O(n log n) exact 1D product: every neuron i is active on an interval ``[a_i, z_i]``
where its ReLU is the affine function ``w_i (x - t_i)`` and its Heaviside is 1. For coefficients x
the function ``g(x) = sum_j x_j (piece j)`` is piecewise linear (A, G) or piecewise constant (H)
between the sorted interval ends, so ``int_{a_i}^{z_i} x^p g(x) dx`` for all i comes from one sort
(done once, on the first product) and prefix sums of exact cell integrals (per product): O(n log n)
set-up, O(n) per column.
``distgn.operator.build`` wraps it into a matrix-free ``Operator``. Rank-local: nothing here calls
MPI.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from distgn.assembly.exact1d import active_intervals

COLUMNS = 4  # columns per pass: keeps the (k, 2n) work arrays small


def fast_matvec_1d(
    bounds: np.ndarray, W: np.ndarray, b: np.ndarray, name: str
) -> Callable[[np.ndarray], np.ndarray]:
    """Exact product ``x -> M x`` for M in {A, H, G} of 1D neurons (any orientations).

    Parameters
    ----------
    bounds : ndarray, shape (1, 2)
        The interval [L, R].
    W, b : ndarray
        Weights (n, 1) and biases (n,), in the order of the matrix rows.
    name : {"A", "H", "G"}
        Which matrix; G is neuron-major with 2x2 blocks (derivative in w, then in b).

    Returns
    -------
    callable
        ``matvec(x)`` for x of shape (N,) or (N, k), N = n (A, H) or 2n (G).
    """
    w = W[:, 0]
    n = w.size

    @functools.cache
    def setup() -> tuple[np.ndarray, ...]:
        """The sort of the interval ends, done on the first product (a solve in 1D value
        coordinates builds the operator of A but never multiplies with it)."""
        t, start, stop = active_intervals(w, b, float(bounds[0, 0]), float(bounds[0, 1]))
        stop = np.maximum(stop, start)
        ends = np.concatenate([start, stop])
        order = np.argsort(ends, kind="stable")
        nodes = ends[order]
        # Position of every neuron's a_i and z_i among the sorted interval ends.
        rank = np.empty(2 * n, dtype=np.int64)
        rank[order] = np.arange(2 * n)
        left, right = nodes[:-1], nodes[1:]
        # Exact integrals of x^q over every cell between consecutive ends, q = 0..3.
        powers = np.stack([(right ** (q + 1) - left ** (q + 1)) / (q + 1) for q in range(4)])
        return t, order, rank[:n], rank[n:], powers

    def moments(slope: np.ndarray, offset: np.ndarray, top: int) -> list[np.ndarray]:
        """``int_{a_i}^{z_i} x^p g`` for p < top (columns first: shape (k, n) in and out)."""
        _, order, lo_at, hi_at, powers = setup()
        alpha, beta = (
            np.cumsum(np.concatenate([v, -v], axis=1)[:, order[:-1]], axis=1)
            for v in (slope, offset)
        )
        out = []
        for p in range(top):
            prefix = np.zeros((alpha.shape[0], 2 * n))
            np.cumsum(powers[p + 1] * alpha + powers[p] * beta, axis=1, out=prefix[:, 1:])
            out.append(prefix[:, hi_at] - prefix[:, lo_at])
        return out

    def product(rows: np.ndarray) -> np.ndarray:
        """``M x`` for the columns of x given as rows (k, N)."""
        if name == "A":
            t = setup()[0]
            scaled = rows * w
            m0, m1 = moments(scaled, -scaled * t, 2)
            y = w * (m1 - t * m0)
        elif name == "H":
            y = moments(np.zeros_like(rows), rows, 1)[0]
        else:
            pairs = rows.reshape(rows.shape[0], n, 2)
            m0, m1 = moments(pairs[:, :, 0], pairs[:, :, 1], 2)
            y = np.stack([m1, m0], axis=2).reshape(rows.shape[0], 2 * n)
        return y

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        rows = x.reshape(x.shape[0], -1).T
        y = np.vstack(
            [
                product(np.ascontiguousarray(rows[k : k + COLUMNS]))
                for k in range(0, rows.shape[0], COLUMNS)
            ]
        )
        return y.T.reshape(x.shape)

    return matvec
