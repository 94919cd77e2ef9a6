"""Shallow ReLU network parameters: initialisation, validation, evaluation.

``v(x) = c0 + sum_i c_i relu(w_i . x + b_i)``. Parameters are held in the user's neuron order;
the cluster-tree permutation is applied by the callers that need it. Rank-local: nothing here calls
MPI (every rank builds the same network from the same seed or file).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from distgn.domain import Domain
from distgn.errors import InputError


@dataclass(frozen=True)
class Network:
    """Parameters of a shallow ReLU network.

    Attributes
    ----------
    W : ndarray, shape (n, d)
        Input weights w_i.
    b : ndarray, shape (n,)
        Biases b_i.
    c : ndarray, shape (n,) or None
        Output weights; None until solved for.
    c0 : float or None
        Output bias; None when the network has none.
    """

    W: np.ndarray
    b: np.ndarray
    c: np.ndarray | None = None
    c0: float | None = None

    @property
    def n(self) -> int:
        """Number of neurons."""
        return int(self.W.shape[0])

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return int(self.W.shape[1])

    @property
    def r(self) -> np.ndarray:
        """Nonlinear parameters ``r_i = (w_i, b_i)`` as an (n, d+1) array."""
        return np.column_stack([self.W, self.b])

    def with_r(self, r: np.ndarray) -> Network:
        """The same network with nonlinear parameters ``r`` (n, d+1)."""
        return replace(self, W=np.ascontiguousarray(r[:, :-1]), b=np.ascontiguousarray(r[:, -1]))

    def subset(self, index: np.ndarray) -> Network:
        """The sub-network of the neurons ``index``."""
        return replace(
            self, W=self.W[index], b=self.b[index], c=None if self.c is None else self.c[index]
        )

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """Network values at points ``x`` (N, d); requires ``c``."""
        if self.c is None:
            raise ValueError("network output weights c are not set")
        x = np.atleast_2d(x)
        if self.dim == 1:
            return evaluate_1d(self.W[:, 0], self.b, self.c, self.c0, x[:, 0])
        v = np.maximum(x @ self.W.T + self.b, 0.0) @ self.c
        return v + (self.c0 or 0.0)

    def breakpoints(self) -> np.ndarray:
        """1D breakpoints ``t_i = -b_i / w_i``."""
        return -self.b / self.W[:, 0]


def evaluate_1d(
    w: np.ndarray, b: np.ndarray, c: np.ndarray, c0: float | None, x: np.ndarray
) -> np.ndarray:
    """``c0 + sum_i c_i relu(w_i x + b_i)`` at points x in O((n + N) log n).

    A right-facing neuron (w > 0) is ``w x + b`` where ``x > t = -b / w``, a left-facing one where
    ``x < t``: prefix sums of ``c w`` and ``c b`` over the neurons sorted by t give the active
    neurons' slope and intercept at every point.
    """
    t = -b / w
    v = np.full(x.shape, float(c0 or 0.0))
    for right in (True, False):
        sel = np.flatnonzero((w > 0) == right)
        order = sel[np.argsort(t[sel], kind="stable")]
        ts = t[order]
        slope = np.concatenate([[0.0], np.cumsum((c * w)[order])])
        icept = np.concatenate([[0.0], np.cumsum((c * b)[order])])
        if right:
            k = np.searchsorted(ts, x, side="left")  # t < x
            v += slope[k] * x + icept[k]
        else:
            k = np.searchsorted(ts, x, side="right")  # t <= x are inactive
            v += (slope[-1] - slope[k]) * x + (icept[-1] - icept[k])
    return v


def activity(W: np.ndarray, b: np.ndarray, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """Which neurons are active nowhere and which are active on the whole domain.

    A convex domain is the hull of its vertices (box corners), so the extreme values of the affine
    pre-activation are attained there.
    """
    corners = domain.corners
    z = corners @ W.T + b
    scale = np.abs(corners) @ np.abs(W.T) + np.abs(b)
    slack = 1e-13 * scale.max(axis=0)
    return np.all(z <= slack, axis=0), np.all(z >= -slack, axis=0)


def validate(net: Network, domain: Domain) -> None:
    """Raise InputError, naming the neurons, for parameters that give a singular or NaN problem."""
    if net.W.ndim != 2 or net.W.shape[1] != domain.dim or net.b.shape != (net.n,):
        raise InputError(
            f"network W has shape {net.W.shape} and b {net.b.shape}; "
            f"expected (n, {domain.dim}) and (n,)"
        )
    if net.n < 1:
        raise InputError("network.n = 0: at least one neuron is needed")
    bad = np.flatnonzero(~(np.all(np.isfinite(net.W), axis=1) & np.isfinite(net.b)))
    if bad.size:
        raise InputError(f"network has NaN/inf parameters in neurons {_names(bad)}")
    zero = np.flatnonzero(np.all(net.W == 0.0, axis=1))
    if zero.size:
        raise InputError(f"network has w = 0 in neurons {_names(zero)}")
    dead, affine = activity(net.W, net.b, domain)
    if np.any(dead):
        raise InputError(
            f"neurons {_names(np.flatnonzero(dead))} are never active in the domain (zero rows)"
        )
    if np.count_nonzero(affine) > domain.dim + 1:
        raise InputError(
            f"neurons {_names(np.flatnonzero(affine))} are active on the whole domain: more than "
            f"d+1 = {domain.dim + 1} affine neurons make A singular"
        )
    dup = duplicate_pairs(net.W, net.b)
    if dup.size:
        raise InputError(
            "duplicate neurons (same hyperplane and orientation, singular A): "
            + ", ".join(f"{i} = {j}" for i, j in dup[:8])
            + (" ..." if len(dup) > 8 else "")
        )


def duplicate_pairs(W: np.ndarray, b: np.ndarray, ulps: float = 4.0) -> np.ndarray:
    """Pairs (i, j), i < j, of exact duplicates: the same normalised ``(w, b) / |w|`` (the same
    hyperplane and orientation) to ``ulps`` units in the last place, componentwise.

    Only exact duplicates make A singular; neurons that are merely close (n random breakpoints are
    ~1/n^2 apart) make it ill-conditioned, which the solvers handle (docs/large-n.md).
    """
    r = np.column_stack([W, b]) / np.linalg.norm(W, axis=1)[:, None]
    order = np.lexsort(r.T[::-1])
    sorted_r = r[order]
    size = np.maximum(np.abs(sorted_r[:-1]), np.abs(sorted_r[1:]))
    close = np.all(np.abs(np.diff(sorted_r, axis=0)) <= ulps * np.finfo(float).eps * size, axis=1)
    pairs = np.column_stack([order[:-1][close], order[1:][close]])
    return np.sort(pairs, axis=1)


def _names(index: np.ndarray, most: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in index[:most])
    return f"[{shown}{', ...' if index.size > most else ''}] ({index.size} in all)"


def initial_network(
    domain: Domain, n: int, init: str, seed: int = 0, orientation: str = "positive"
) -> Network:
    """Deterministic initial network (the same on every rank for a given seed).

    Parameters
    ----------
    domain : Domain
        The domain; lines and breakpoints are placed so that every neuron is active in it.
    n : int
        Number of neurons.
    init : {"uniform", "random"}
        1D: equispaced breakpoints ``L + k (R - L) / n`` (left-facing neurons half a cell later)
        or uniformly random ones. 2D and up:
        equispaced or random directions, with offsets placing every hyperplane across the domain.
    seed : int
        Seed of the random generator (``init = "random"`` and random orientations).
    orientation : {"positive", "alternating", "random"}
        1D only: sign of w_i.
    """
    if n < 1:
        raise InputError(f"network.n = {n} must be at least 1")
    rng = np.random.default_rng(seed)
    if domain.dim == 1:
        L, R = domain.bounds[0]
        if orientation == "positive":
            w = np.ones(n)
        elif orientation == "alternating":
            w = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        else:
            w = rng.choice([-1.0, 1.0], size=n)
        if init == "uniform":
            # Grid points L + k h; a neuron facing left sits half a cell later: never dead, and
            # never on a right-facing neuron's breakpoint (such a pair spans an affine function,
            # and three pairs would make A singular).
            t = L + (np.arange(n) + 0.5 * (w < 0)) * (R - L) / n
        else:
            t = np.sort(rng.uniform(L, R, size=n))
        return Network(w[:, None], -w * t)
    if init == "uniform":
        # An odd number of directions: with an even one, each line at angle theta + pi would
        # coincide with one at theta (same offset fractions, opposite orientation), and such pairs
        # span affine functions, making A singular (half the neurons deflated at n = 1024).
        directions = max(1, int(np.ceil(np.sqrt(n))))
        directions += 1 - directions % 2
        counts = np.full(directions, n // directions) + (np.arange(directions) < n % directions)
        theta = np.repeat(2 * np.pi * np.arange(directions) / directions, counts)
        fraction = np.concatenate([(np.arange(k) + 0.5) / k for k in counts])
    else:
        theta = rng.uniform(0.0, 2 * np.pi, size=n)
        fraction = rng.uniform(0.0, 1.0, size=n)
    normals = _unit_vectors(theta, domain.dim, rng if init == "random" else None)
    extent = domain.corners @ normals.T
    lo, hi = extent.min(axis=0), extent.max(axis=0)
    offsets = lo + fraction * (hi - lo)
    return Network(normals, -offsets)


def _unit_vectors(theta: np.ndarray, dim: int, rng: np.random.Generator | None) -> np.ndarray:
    if dim == 2:
        return np.column_stack([np.cos(theta), np.sin(theta)])
    # d >= 3: random directions (seeded) or a deterministic low-discrepancy spread.
    if rng is None:
        rng = np.random.default_rng(12345)
    v = rng.standard_normal((theta.size, dim))
    return v / np.linalg.norm(v, axis=1)[:, None]
