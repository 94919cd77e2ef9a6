"""Exact fast products with A, H, G in 1D, distributed by block rows.

Owns the exact 1D product: every neuron i is active on an interval ``[a_i, z_i]`` where its ReLU
is the affine function ``w_i (x - t_i)`` and its Heaviside is 1. For coefficients x the function
``g(x) = sum_j x_j (piece j)`` is piecewise linear (A, G) or piecewise constant (H) between the
sorted interval ends, so ``int_{a_i}^{z_i} x^p g(x) dx = P(z_i) - P(a_i)`` with the prefix
``P(s) = int_L^s x^p g`` from prefix sums of exact cell integrals.

Distributed (docs/large-n.md, section 4): rank p holds only its neurons, a contiguous block of
the neurons sorted by breakpoint (the 1D tree order), so its interior breakpoints lie between
those of ranks p - 1 and p + 1. On its cells ``g`` is the sum of its own pieces and of the pieces
that start at L (from every rank) or at the breakpoints of lower ranks; ``P`` is its own prefix
plus the integrals over the cells of lower ranks. A product sends two small ``Allgather`` of
``4 k`` and ``p k`` numbers per rank (k columns; p = 2 moments for A and G, 1 for H), no vector
entries: O(n/P) work and memory, O(P k) numbers received. The sort of a rank's interval ends is
done once, on the first product.
``distgn.operator.build`` wraps it into a matrix-free ``Operator``. ``fast_matvec_1d`` and the
product are collective over the communicator given (rank-local on ``MPI.COMM_SELF``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from distgn.assembly.exact1d import active_intervals

COLUMNS = 4  # columns per pass: keeps the (k, 2n) work arrays small


def fast_matvec_1d(
    bounds: np.ndarray, W: np.ndarray, b: np.ndarray, name: str, comm: MPI.Comm = MPI.COMM_SELF
) -> Callable[[np.ndarray], np.ndarray]:
    """Exact product ``x -> M x`` on this rank's rows for M in {A, H, G} of 1D neurons.

    Parameters
    ----------
    bounds : ndarray, shape (1, 2)
        The interval [L, R].
    W, b : ndarray
        This rank's neurons: weights (m, 1) and biases (m,), in the order of its matrix rows (any
        orientations). Over several ranks the blocks must follow the breakpoint order: every
        breakpoint inside (L, R) of rank p is at most every one of rank p + 1.
    name : {"A", "H", "G"}
        Which matrix; G is neuron-major with 2x2 blocks (derivative in w, then in b).
    comm : MPI.Comm
        The ranks sharing the matrix (``MPI.COMM_SELF``: all neurons on one rank).

    Returns
    -------
    callable
        ``matvec(x)`` for this rank's rows x of shape (m_rows,) or (m_rows, k), m_rows = m (A, H)
        or 2m (G); collective.

    Raises
    ------
    ValueError
        On the first product, when the blocks do not follow the breakpoint order.
    """
    w = W[:, 0]
    n = w.size
    L, R = float(bounds[0, 0]), float(bounds[0, 1])

    @functools.cache
    def setup() -> tuple:
        """The sort of this rank's interior interval ends and the cells it integrates over."""
        t, start, stop = active_intervals(w, b, L, R)
        stop = np.maximum(stop, start)
        ends = np.concatenate([start, stop])
        interior = np.flatnonzero((ends > L) & (ends < R))
        order = interior[np.argsort(ends[interior], kind="stable")]
        nodes = ends[order]
        first, last = (float(nodes[0]), float(nodes[-1])) if nodes.size else (np.inf, -np.inf)
        spans = np.array(comm.allgather((first, last)))  # the same on every rank
        if np.any(np.maximum.accumulate(spans[:-1, 1]) > spans[1:, 0]):
            raise ValueError("fast_matvec_1d: the ranks' neurons are not in breakpoint order")
        lower = spans[: comm.rank, 1]
        nonempty = np.flatnonzero(np.isfinite(spans[:, 0]))
        # The cells of this rank: from the previous rank's last end (or L) over its own ends;
        # the rank with the last interior end (rank 0 if there is none) also integrates to R.
        previous = max([L] + [float(v) for v in lower if np.isfinite(v)])
        closing = comm.rank == (int(nonempty[-1]) if nonempty.size else 0)
        edges = np.concatenate([[previous] if nodes.size or closing else [], nodes])
        if closing:
            edges = np.append(edges, R)
        left, right = edges[:-1], edges[1:]
        powers = np.stack([(right ** (q + 1) - left ** (q + 1)) / (q + 1) for q in range(4)])
        # Where each neuron's ends are read from [prefix at the edges, 0, total]: at an interior
        # end the prefix over the cells before it, at L the zero, at R the total.
        cells = powers.shape[1]
        where = np.where(ends <= L, cells + 1, cells + 2)
        where[order] = np.arange(1, order.size + 1)
        at_left = np.concatenate([start <= L, stop <= L])
        return t, order, where, at_left, powers

    def moments(slope: np.ndarray, offset: np.ndarray, top: int) -> list[np.ndarray]:
        """``int_{a_i}^{z_i} x^p g`` for p < top (columns first: shape (k, n) in and out)."""
        _, order, where, at_left, powers = setup()
        k = slope.shape[0]
        signed = [np.concatenate([v, -v], axis=1) for v in (slope, offset)]
        steps = [s[:, order] for s in signed]
        # Sums of the pieces that start (or end) at L, active on every cell of every rank, and of
        # this rank's increments, which lie below every cell of the higher ranks.
        mine = np.array(
            [[s[:, at_left].sum(axis=1) for s in signed], [s.sum(axis=1) for s in steps]]
        )
        every = np.empty((comm.size,) + mine.shape)  # rank, (base, steps), (slope, offset), k
        comm.Allgather(mine, every)
        offsets = every[:, 0].sum(axis=0) + every[: comm.rank, 1].sum(axis=0)
        cells = powers.shape[1]
        alpha, beta = (
            np.cumsum(np.concatenate([o[:, None], s], axis=1)[:, :cells], axis=1)
            for o, s in zip(offsets, steps, strict=True)
        )
        out, prefixes = [], []
        for p in range(top):
            prefix = np.zeros((k, cells + 1))
            np.cumsum(powers[p + 1] * alpha + powers[p] * beta, axis=1, out=prefix[:, 1:])
            prefixes.append(prefix)
        mine = np.array([pr[:, -1] for pr in prefixes])
        totals = np.empty((comm.size,) + mine.shape)
        comm.Allgather(mine, totals)
        below, whole = totals[: comm.rank].sum(axis=0), totals.sum(axis=0)
        for p in range(top):
            value = np.concatenate(
                [prefixes[p] + below[p][:, None], np.zeros((k, 1)), whole[p][:, None]], axis=1
            )
            at = value[:, where]
            out.append(at[:, n:] - at[:, :n])
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
        rows = x.reshape(x.shape[0], int(np.prod(x.shape[1:]))).T  # columns as rows (k, m)
        y = np.vstack(
            [
                product(np.ascontiguousarray(rows[k : k + COLUMNS]))
                for k in range(0, rows.shape[0], COLUMNS)
            ]
        )
        return y.T.reshape(x.shape)

    return matvec
