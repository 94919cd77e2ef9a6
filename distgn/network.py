"""Shallow ReLU network parameters: initialisation, validation, evaluation.

``v(x) = c0 + sum_i c_i relu(w_i . x + b_i)``. Parameters are held in the user's neuron order;
the cluster-tree permutation is applied by the callers that need it. Rank-local (every rank builds
the same network, or its own rows of it, from the same seed or file), except ``validate`` of a
network split by rank and ``sort_by_breakpoint``, which are collective.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from mpi4py import MPI

from distgn.domain import Domain
from distgn.errors import InputError
from distgn.parallel import agree, exchange_rows
from distgn.tree import split_offsets


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


def validate(
    net: Network, domain: Domain, comm: MPI.Comm | None = None, users: np.ndarray | None = None
) -> None:
    """Raise InputError, naming the neurons, for parameters that give a singular or NaN problem.

    With ``comm``, ``net`` is this rank's part of a 1D network split by rank in breakpoint order
    (``users``: the user index of each of its neurons) and the check is collective: each rank
    checks its neurons, the affine ones are counted over all ranks, duplicates are looked for
    among its neurons and the first ``DUPLICATE_HALO`` of the next rank, and every rank raises
    the error of the first rank that found one.
    """
    names = np.arange(net.n) if users is None else np.asarray(users)
    error = _row_error(net, domain, names)
    _raise(comm, error)
    _, affine = activity(net.W, net.b, domain)
    count = int(np.count_nonzero(affine))
    if comm is not None:
        count = comm.allreduce(count)
    error = None
    if count > domain.dim + 1 and affine.any():
        error = (
            f"neurons {_names(names[affine])} are active on the whole domain: more than "
            f"d+1 = {domain.dim + 1} affine neurons ({count} in all) make A singular"
        )
    _raise(comm, error)
    W, b, local = net.W, net.b, net.n
    if comm is not None and comm.size > 1:
        rank = comm.rank
        halo = comm.sendrecv(
            (W[:DUPLICATE_HALO], b[:DUPLICATE_HALO], names[:DUPLICATE_HALO]),
            dest=rank - 1 if rank > 0 else MPI.PROC_NULL,
            source=rank + 1 if rank + 1 < comm.size else MPI.PROC_NULL,
        )
        if halo is not None:
            W, b, names = (np.concatenate(pair) for pair in zip((W, b, names), halo, strict=True))
    dup = duplicate_pairs(W, b)
    dup = names[dup[np.min(dup, axis=1) < local]] if dup.size else dup
    error = (
        "duplicate neurons (same hyperplane and orientation, singular A): "
        + ", ".join(f"{i} = {j}" for i, j in np.sort(dup, axis=1)[:8])
        + (" ..." if len(dup) > 8 else "")
        if len(dup)
        else None
    )
    _raise(comm, error)


def _raise(comm: MPI.Comm | None, error: str | None) -> None:
    """Raise InputError(error) here, or with ``comm`` on every rank when any rank has one."""
    if comm is not None:
        agree(comm, error)
    elif error:
        raise InputError(error)


# Neurons of the next rank searched for duplicates of a rank's own (``validate``): exact
# duplicates within a few ulps, and at most a handful of other neurons between them.
DUPLICATE_HALO = 32


def _row_error(net: Network, domain: Domain, names: np.ndarray) -> str | None:
    """The first problem of a neuron on its own (shape, NaN, w = 0, never active), or None."""
    if net.W.ndim != 2 or net.W.shape[1] != domain.dim or net.b.shape != (net.n,):
        return (
            f"network W has shape {net.W.shape} and b {net.b.shape}; "
            f"expected (n, {domain.dim}) and (n,)"
        )
    if names.size < 1:
        return "network.n = 0: at least one neuron is needed"
    bad = ~(np.all(np.isfinite(net.W), axis=1) & np.isfinite(net.b))
    if bad.any():
        return f"network has NaN/inf parameters in neurons {_names(names[bad])}"
    zero = np.all(net.W == 0.0, axis=1)
    if zero.any():
        return f"network has w = 0 in neurons {_names(names[zero])}"
    dead, _ = activity(net.W, net.b, domain)
    if np.any(dead):
        return f"neurons {_names(names[dead])} are never active in the domain (zero rows)"
    return None


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
    domain: Domain,
    n: int,
    init: str,
    seed: int = 0,
    orientation: str = "positive",
    rows: tuple[int, int] | None = None,
) -> Network:
    """Deterministic initial network (the same on every rank for a given seed), or its neurons
    ``rows = (start, stop)`` of the user order.

    Parameters
    ----------
    domain : Domain
        The domain; lines and breakpoints are placed so that every neuron is active in it.
    n : int
        Number of neurons.
    init : {"uniform", "random"}
        1D: equispaced breakpoints ``L + k (R - L) / n`` (left-facing neurons half a cell later)
        or n independent uniform ones, sorted (``sorted_uniform``). 2D and up: equispaced or
        random directions, with offsets placing every hyperplane across the domain.
    seed : int
        Seed of the random generator (``init = "random"`` and random orientations).
    orientation : {"positive", "alternating", "random"}
        1D only: sign of w_i (random: ``random_signs``).
    rows : (int, int), optional
        Only these neurons. In 1D they are computed alone, O(stop - start) work and memory (plus
        O(n / RANDOM_BLOCK) for random breakpoints), with the same bits as in the whole network;
        1D networks are in breakpoint order (a rank's rows are its block of the neuron tree).
        In 2D and up the whole network is generated and sliced.
    """
    if n < 1:
        raise InputError(f"network.n = {n} must be at least 1")
    start, stop = (0, n) if rows is None else rows
    if domain.dim == 1:
        L, R = domain.bounds[0]
        k = np.arange(start, stop)
        if orientation == "positive":
            w = np.ones(k.size)
        elif orientation == "alternating":
            w = np.where(k % 2 == 0, 1.0, -1.0)
        else:
            w = random_signs(seed, start, stop)
        if init == "uniform":
            # Grid points L + k h; a neuron facing left sits half a cell later: never dead, and
            # never on a right-facing neuron's breakpoint (such a pair spans an affine function,
            # and three pairs would make A singular).
            t = L + (k + 0.5 * (w < 0)) * (R - L) / n
        else:
            t = L + (R - L) * sorted_uniform(n, seed, start, stop)
        return Network(w[:, None], -w * t)
    rng = np.random.default_rng(seed)
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
    return Network(normals[start:stop], -offsets[start:stop])


def sort_by_breakpoint(
    comm: MPI.Comm, part: Network, users: np.ndarray
) -> tuple[Network, np.ndarray]:
    """A 1D network held in pieces (``part``: this rank's neurons, ``users`` their user indices)
    redistributed in breakpoint order: rank p gets the neurons at positions
    ``split_offsets(n, P)[p:p + 2]`` of the order of ``tree.neuron_order`` (breakpoint, then
    orientation, then user index), and their user indices. Collective.

    A sample sort: every rank sorts its neurons and offers P evenly spaced keys, the P - 1
    splitters are taken evenly from all P^2 offers, one ``Alltoallv`` sends every neuron to the
    rank of its splitter interval, and a second one evens the counts out to the exact ranges.
    O(n/P log n) work per rank, O(P^2) keys and the neurons themselves sent.
    """
    P = comm.size
    c = part.c if part.c is not None else np.zeros(part.n)
    rows = np.column_stack([part.W[:, 0], part.b, c, users.astype(float)])

    def keys(block: np.ndarray) -> np.ndarray:
        """(breakpoint, orientation, user index); w = 0 (refused later by ``validate``) and NaN
        sort last, without a warning."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -block[:, 1] / block[:, 0]
        return np.column_stack([t, np.sign(block[:, 0]), block[:, 3]])

    def order(block: np.ndarray) -> np.ndarray:
        return np.lexsort(keys(block).T[::-1])

    rows = rows[order(rows)]
    if P > 1:
        at = (np.arange(P) * rows.shape[0]) // P
        offered = np.vstack(comm.allgather(keys(rows)[at] if rows.shape[0] else np.zeros((0, 3))))
        offered = offered[np.lexsort(offered.T[::-1])]
        splitters = offered[(np.arange(1, P) * offered.shape[0]) // P]
        # destination: the number of splitters before a neuron (a neuron equal to a splitter
        # goes above it: the flag orders the neuron first among equal keys)
        both = np.vstack([keys(rows), splitters])
        flag = np.concatenate([np.zeros(rows.shape[0]), np.ones(P - 1)])
        ranked = np.lexsort((flag, both[:, 2], both[:, 1], both[:, 0]))
        is_splitter = ranked >= rows.shape[0]
        before = np.cumsum(is_splitter)[~is_splitter]
        rows = exchange_rows(comm, rows, before)
        rows = rows[order(rows)]
        n = comm.allreduce(rows.shape[0])
        start = comm.exscan(rows.shape[0]) or 0
        exact = np.searchsorted(split_offsets(n, P), start + np.arange(rows.shape[0]), "right") - 1
        rows = exchange_rows(comm, rows, exact)  # already in order: ranges arrive by rank
    network = Network(rows[:, :1], rows[:, 1], rows[:, 2] if part.c is not None else None, part.c0)
    return network, rows[:, 3].astype(np.int64)


# Random 1D networks are drawn in blocks of this many values, each from its own counter-based
# stream, so that any range of neurons is computed alone and with the same bits.
RANDOM_BLOCK = 4096
_SPACINGS, _SIGNS, _TOTALS = 1, 2, 3


def _stream(seed: int, kind: int, block: int) -> np.random.Generator:
    """The generator of one block: Philox keyed by (seed, kind, block); seed in [0, 2^60)."""
    return np.random.Generator(np.random.Philox(key=((seed << 2 | kind) << 64) | block))


def random_signs(seed: int, start: int, stop: int) -> np.ndarray:
    """Signs +-1 of neurons ``[start, stop)``, independent and equally likely."""
    first, last = start // RANDOM_BLOCK, max(start, stop - 1) // RANDOM_BLOCK
    bits = np.concatenate(
        [_stream(seed, _SIGNS, j).integers(0, 2, RANDOM_BLOCK) for j in range(first, last + 1)]
    )
    offset = start - first * RANDOM_BLOCK
    return np.where(bits[offset : offset + stop - start] == 1, 1.0, -1.0)


def sorted_uniform(n: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Entries ``[start, stop)`` of n independent uniform numbers in (0, 1), sorted.

    The k-th smallest is ``S_k / S_(n+1)``, with ``S_k`` the sum of the first k of n + 1
    independent exponential spacings. The spacings come in blocks of ``RANDOM_BLOCK``: the
    block sums (Gamma distributed, one draw each, O(n / RANDOM_BLOCK) on every caller) and, in
    each block the range touches, the spacings divided by their sum (a flat Dirichlet vector,
    independent of the sum) times the block's sum: the same joint law as n + 1 exponentials,
    computed for any range alone, with the same bits, non-decreasing across blocks.
    """
    sizes = np.full((n + 1 + RANDOM_BLOCK - 1) // RANDOM_BLOCK, RANDOM_BLOCK)
    sizes[-1] = n + 1 - RANDOM_BLOCK * (sizes.size - 1)
    totals = _stream(seed, _TOTALS, 0).standard_gamma(sizes.astype(float))
    before = np.concatenate([[0.0], np.cumsum(totals)])
    out = np.empty(stop - start)
    for j in range(start // RANDOM_BLOCK, (stop - 1) // RANDOM_BLOCK + 1 if stop > start else 0):
        spacing = _stream(seed, _SPACINGS, j).standard_exponential(sizes[j])
        partial = np.cumsum(spacing)
        partial = before[j] + totals[j] * (partial / partial[-1])
        partial[-1] = before[j + 1]  # the next block starts exactly there
        a, z = max(start, j * RANDOM_BLOCK), min(stop, (j + 1) * RANDOM_BLOCK)
        out[a - start : z - start] = partial[a - j * RANDOM_BLOCK : z - j * RANDOM_BLOCK]
    return out / before[-1]


def _unit_vectors(theta: np.ndarray, dim: int, rng: np.random.Generator | None) -> np.ndarray:
    if dim == 2:
        return np.column_stack([np.cos(theta), np.sin(theta)])
    # d >= 3: random directions (seeded) or a deterministic low-discrepancy spread.
    if rng is None:
        rng = np.random.default_rng(12345)
    v = rng.standard_normal((theta.size, dim))
    return v / np.linalg.norm(v, axis=1)[:, None]
