"""Exact 1D integrals: closed forms for A, H, G and Gauss rules for the target moments.

On the common active interval [lo, hi] of two neurons both ReLUs are affine and nonnegative, so
Simpson's rule gives ``A_ij`` exactly with nonnegative terms (no cancellation); ``H_ij`` is the
length and ``G_(i,j)`` the moments of (x, 1). Target moments ``int u h_i (x, 1)`` come from
cumulative Gauss-Legendre integrals over the cells between all breakpoints and the target's declared
jumps, graded towards its singular points and refined in its layers. Rank-local: no MPI.
"""

from __future__ import annotations

import numpy as np

from distgn.assembly.quadrature import gauss_legendre
from distgn.targets import Target

GAUSS_POINTS = 20
GRADING_LEVELS = 60
LAYER_WIDTHS = 30.0
LAYER_CELLS_PER_WIDTH = 2


def active_intervals(
    w: np.ndarray, b: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breakpoints and active intervals ``[a_i, z_i]`` on [lo, hi] (empty if a_i >= z_i)."""
    t = -b / w
    start = np.where(w > 0, np.maximum(t, lo), lo)
    stop = np.where(w > 0, hi, np.minimum(t, hi))
    return t, start, stop


def relu_squares(bounds: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int relu(w_i x + b_i)^2`` over the interval for every neuron, shape (n,): the diagonal
    of A, in closed form: ``(z - a) (p_a^2 + p_a p_z + p_z^2) / 3`` over the active interval
    ``[a, z]`` with end values ``p_a, p_z >= 0`` (no cancellation)."""
    w, bias = np.asarray(W, dtype=float)[:, 0], np.asarray(b, dtype=float)
    _, start, stop = active_intervals(w, bias, float(bounds[0, 0]), float(bounds[0, 1]))
    left, right = w * start + bias, w * stop + bias
    square = (left * left + left * right + right * right) / 3.0
    return np.where(stop > start, (stop - start) * square, 0.0)


def pair_integrals(
    bounds: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    I: np.ndarray,
    J: np.ndarray,
    which: tuple[str, ...] = ("A", "H", "G"),
) -> dict[str, np.ndarray]:
    """Exact ``A``, ``H`` (|I|, |J|) and ``G`` (|I|, |J|, 2, 2) for neuron pairs on an interval.

    Parameters
    ----------
    bounds : ndarray, shape (1, 2)
        The interval [L, R].
    W, b : ndarray
        Weights (n, 1) and biases (n,).
    I, J : ndarray of int
        Row and column neurons.
    which : tuple of str
        Which of "A", "H", "G" to return.
    """
    w = W[:, 0]
    t, start, stop = active_intervals(w, b, float(bounds[0, 0]), float(bounds[0, 1]))
    lo = np.maximum(start[I][:, None], start[J][None, :])
    hi = np.minimum(stop[I][:, None], stop[J][None, :])
    np.maximum(hi, lo, out=hi)
    length = hi - lo  # zero where the supports are disjoint; then every product below is 0
    out: dict[str, np.ndarray] = {}
    if "A" in which:
        # On [lo, hi] both f_k(x) = w_k (x - t_k) are >= 0: Simpson's rule with positive terms.
        wi, ti = w[I][:, None], t[I][:, None]
        wj, tj = w[J][None, :], t[J][None, :]
        a, z = wi * (lo - ti), wi * (hi - ti)
        c, e = wj * (lo - tj), wj * (hi - tj)
        A = (2.0 * a + z) * c
        A += (a + 2.0 * z) * e
        A *= length
        A /= 6.0
        out["A"] = A
    if "H" in which:
        out["H"] = length
    if "G" in which:
        G = np.empty(length.shape + (2, 2))
        G[..., 0, 0] = length * (hi * hi + hi * lo + lo * lo) / 3.0
        G[..., 0, 1] = G[..., 1, 0] = length * (hi + lo) / 2.0
        G[..., 1, 1] = length
        out["G"] = G
    return out


def quadrature_nodes(bounds: np.ndarray, cuts: np.ndarray, target: Target | None) -> np.ndarray:
    """Sorted cell boundaries: the interval ends, ``cuts`` inside it, and the target's features."""
    L, R = float(bounds[0, 0]), float(bounds[0, 1])
    extra = [np.asarray(cuts, dtype=float), np.linspace(L, R, 65)]
    if target is not None:
        extra.append(np.asarray(target.points, dtype=float))
        grading = (R - L) * 2.0 ** -np.arange(1, GRADING_LEVELS + 1)
        for x0 in target.singular:
            extra.append(np.concatenate([[x0], x0 - grading, x0 + grading]))
        for center, width in target.layers:
            k = int(LAYER_WIDTHS * LAYER_CELLS_PER_WIDTH)
            extra.append(center + width * np.linspace(-LAYER_WIDTHS, LAYER_WIDTHS, 2 * k + 1))
    nodes = np.concatenate(extra)
    nodes = nodes[np.isfinite(nodes) & (nodes > L) & (nodes < R)]
    return np.unique(np.concatenate([[L, R], nodes]))


def cumulative_moments(nodes: np.ndarray, func, powers: int) -> np.ndarray:
    """``C[k, p] = int_{nodes[0]}^{nodes[k]} func(x) x^p dx`` for p < powers, by Gauss per cell."""
    gx, gw = gauss_legendre(GAUSS_POINTS)
    half = 0.5 * np.diff(nodes)
    mid = 0.5 * (nodes[1:] + nodes[:-1])
    x = mid[:, None] + half[:, None] * gx[None, :]
    fx = np.asarray(func(x.reshape(-1, 1)), dtype=float).reshape(x.shape)
    cells = np.stack([(fx * x**p) @ gw * half for p in range(powers)], axis=1)
    return np.vstack([np.zeros((1, powers)), np.cumsum(cells, axis=0)])


def target_moments(
    bounds: np.ndarray, W: np.ndarray, b: np.ndarray, I: np.ndarray, target: Target
) -> np.ndarray:
    """``int u h_i (x, 1) dx`` for neurons I, shape (|I|, 2).

    Accurate to rounding (relative to ``int |u|``) when u is smooth between the cell boundaries;
    the target's singular points get geometrically graded cells (down to 2^-60 of the interval).
    """
    w = W[:, 0]
    L, R = float(bounds[0, 0]), float(bounds[0, 1])
    t, start, stop = active_intervals(w, b, L, R)
    nodes = quadrature_nodes(bounds, t, target)
    C = cumulative_moments(nodes, target, 2)
    a = np.searchsorted(nodes, np.clip(start[I], L, R))
    z = np.searchsorted(nodes, np.clip(stop[I], L, R))
    moments = (C[z] - C[a])[:, [1, 0]]
    return np.where((stop[I] > start[I])[:, None], moments, 0.0)


def target_integrals(bounds: np.ndarray, target: Target) -> tuple[float, float]:
    """``(int u, int u^2)`` over the interval."""
    nodes = quadrature_nodes(bounds, np.empty(0), target)
    total = cumulative_moments(nodes, target, 1)[-1, 0]
    total_sq = cumulative_moments(nodes, lambda x: target(x) ** 2, 1)[-1, 0]
    return float(total), float(total_sq)
