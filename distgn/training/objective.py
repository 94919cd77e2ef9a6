"""The exact least-squares objective shared by SgGN and the baselines, and its MPI plumbing.

``J = 1/2 int (v - u)^2`` and its gradient in (c, c0, W, b) from exact pair integrals (in 1D,
cell sums between the kinks) and target moments (distgn.assembly): ``int v h_i xhat = sum_j c_j
G_(i,j) r_j + c0 int h_i xhat``, so the gradient in r_i is ``c_i int (v - u) h_i xhat`` and in
c_i ``int (v - u) phi_i`` (docs/math.md).
The 1D loss comes from direct Gauss rules between the breakpoints (``fit.l2_error_1d``: no
cancellation, it reaches round-off); in 2D from the same moments, except for the few neurons whose
large coefficients cancel (the pairs that sharpen a jump), whose part of ``int v^2`` and of their
moments is integrated on the cells of their lines (``_cancelling_2d``).

Every rank holds the whole network (replicated, user order). Row-wise work is split into
contiguous shares (``owned_rows``), every row is computed the same way whatever the share, and the
rows are gathered in neuron order before they are added (``allrows``), so every
rank, on any number of ranks, gets the same bits and takes the same decisions.
Functions taking a ``Context`` or a communicator are collective; the others are rank-local.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from mpi4py import MPI

from distgn.assembly import ONE, pair_integrals, target_integrals, target_moments
from distgn.assembly.polygon import relu_sum_integrals
from distgn.config import SolverConfig
from distgn.errors import SolverError
from distgn.fit import l2_error_1d
from distgn.network import Network
from distgn.problem import Problem

EPS = float(np.finfo(float).eps)
CHUNK_ENTRIES = 1 << 21
# 2D: neurons with |c_i| |phi_i| above CANCELLING |u| (at most MAX_CANCELLING) enter c^T A c
# through the exact square of their sum on the cells of their lines (``_cancelling_2d``).
CANCELLING = 8.0
MAX_CANCELLING = 32


@dataclass(frozen=True)
class Context:
    """What every collective evaluation needs: the problem, the ranks and the linear solver.

    With ``deterministic`` (``[train] deterministic``), the optimizer's linear solves (c-solve,
    solve with G) run on every rank alike over COMM_SELF (``solve``), so that no rounding that
    depends on the number of ranks feeds the optimizer; the sums stay shared (``allrows``).
    """

    problem: Problem
    comm: MPI.Comm
    solver: SolverConfig
    deterministic: bool = False

    def solve(self, count: int, work: Callable[[MPI.Comm], object]) -> object:
        """Run a linear solve over ``count`` neurons: ``work(comm)`` on ``on_ranks``, or with
        ``deterministic`` on every rank alike over COMM_SELF (the same bits on every rank and
        for every number of ranks). Collective."""
        return work(MPI.COMM_SELF) if self.deterministic else on_ranks(self.comm, count, work)

    @property
    def dim(self) -> int:
        """Space dimension d."""
        return self.problem.domain.dim

    @cached_property
    def target_norms(self) -> tuple[float, float]:
        """``(int u, int u^2)``."""
        return target_integrals(self.problem.domain, self.problem.target)


# ---------------------------------------------------------------------------------------------
# MPI helpers


def owned_rows(comm: MPI.Comm, index: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of ``index`` (for row-wise sums). Rank-local."""
    edges = np.linspace(0, index.size, comm.size + 1).round().astype(int)
    return index[edges[comm.rank] : edges[comm.rank + 1]]


def allrows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order. Collective."""
    return np.concatenate(comm.allgather(local), axis=0)


def on_ranks(comm: MPI.Comm, count: int, work: Callable[[MPI.Comm], object]) -> object:
    """Run ``work(sub)`` on the first ``min(count, P)`` ranks and broadcast rank 0's result.

    A cluster tree needs at least one neuron per rank, so small systems are solved on fewer ranks
    Collective over ``comm``.
    """
    if count >= comm.size:
        return work(comm)
    # PETSc starts collectively over MPI_COMM_WORLD when first imported (distgn.solvers): start
    # it on every rank before only some of them go on to a solver that imports it.
    from petsc4py import PETSc  # noqa: F401

    sub = comm.Split(0 if comm.rank < count else MPI.UNDEFINED, comm.rank)
    result = None
    if sub != MPI.COMM_NULL:
        try:
            result = work(sub)
        except SolverError as exc:
            result = exc
        finally:
            sub.Free()
    result = comm.bcast(result, root=0)
    if isinstance(result, SolverError):
        raise result
    return result


def pair_rows(
    problem: Problem,
    network: Network,
    rows: np.ndarray,
    columns: np.ndarray,
    which: tuple[str, ...],
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows chunk, pair integrals)`` of bounded size. Rank-local.

    Every row is computed (and contracted with numpy's plain ``einsum`` by the callers) the same
    way whatever the chunk, so row results do not depend on the number of ranks.
    """
    k = problem.domain.dim + 1
    per_row = max(1, columns.size * (k * k if "G" in which else 1))
    step = max(1, CHUNK_ENTRIES // per_row)
    for lo in range(0, rows.size, step):
        chunk = rows[lo : lo + step]
        yield chunk, pair_integrals(problem.domain, network.W, network.b, chunk, columns, which)


def evaluate_loss(ctx: Context, network: Network) -> tuple[float, float]:
    """``(J, L2 error)``, ``J = 1/2 int (v - u)^2``. Collective.

    1D: direct Gauss rules on the cells between breakpoints (no cancellation, reaches round-off).
    Otherwise ``loss_and_gradient``'s formula over the neurons with ``c_i != 0`` (the line search
    and the c-solve measure the loss exactly as the gradient does).
    """
    if ctx.dim == 1:
        l2 = l2_error_1d(
            ctx.problem.domain.bounds,
            network.W,
            network.b,
            network.c,
            network.c0,
            ctx.problem.target,
        )
        return 0.5 * l2 * l2, l2
    grad = loss_and_gradient(ctx, network, network.c != 0)
    return grad.loss, grad.l2_error


def network_moments(
    problem: Problem,
    network: Network,
    rows: np.ndarray,
    source: Network | None = None,
    diagonal: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``int v h_i xhat`` for neurons ``rows`` of ``network``, shape (|rows|, d+1). Rank-local.

    v is the function of ``source`` (default: ``network`` itself) without its output bias:
    ``int v h_i xhat = sum_j c_j G_(i,j) r_j`` (exact pair integrals; in 1D by sums over the
    cells between the breakpoints, ``_network_moments_1d``, O(n log n) instead of O(n^2)). With
    ``diagonal`` (source = network), also ``A_(i,i) = r_i^T G_(i,i) r_i = int phi_i^2`` for the
    rows with ``c_i != 0`` (0 for the others). Each row is computed the same way whatever the
    chunk, so it does not depend on the number of ranks.
    """
    source = network if source is None else source
    if problem.domain.dim == 1:
        L, R = (float(v) for v in problem.domain.bounds[0])
        out, squares = _network_moments_1d((L, R), network, rows, source)
        return (out, squares) if diagonal else out
    support = np.flatnonzero(source.c != 0)
    both = Network(
        np.vstack([network.W, source.W[support]]), np.concatenate([network.b, source.b[support]])
    )
    columns = network.n + np.arange(support.size)
    cr = source.c[support, None] * source.r[support]
    out = np.zeros((rows.size, problem.domain.dim + 1))
    squares = np.zeros(rows.size)
    offset = 0
    for chunk, part in pair_rows(problem, both, rows, columns, ("G",)):
        out[offset : offset + chunk.size] = np.einsum("ijkl,jl->ik", part["G"], cr)
        if diagonal and support.size:
            position = np.minimum(np.searchsorted(support, chunk), support.size - 1)
            own = np.flatnonzero(support[position] == chunk)
            r = network.r[chunk[own]]
            squares[offset + own] = np.einsum("ik,ikl,il->i", r, part["G"][own, position[own]], r)
        offset += chunk.size
    return (out, squares) if diagonal else out


def _network_moments_1d(
    bounds: tuple[float, float], network: Network, rows: np.ndarray, source: Network
) -> tuple[np.ndarray, np.ndarray]:
    """1D ``network_moments`` and ``int phi_i^2`` in O((n + m) log(n + m)), m = source's size.

    ``v`` (source, without output bias) is linear on the cells between the breakpoints of both
    networks. Its slope and intercept per cell are sums over the neurons active there (forward
    sums of the neurons facing right, backward sums of those facing left: no cancellation of a
    neuron against itself). Per cell ``int v`` and ``int x v`` in midpoint coordinates; a row's
    moments are the backward (``w > 0``, support ``[k, R]``) or forward (``w < 0``, ``[L, k]``) sums
    of its cells' integrals (w != 0, as everywhere in 1D). ``int phi_i^2`` in closed form.
    Rank-local; every row is the same whatever the share it is computed in (the cells are those of
    all of ``network``'s breakpoints).
    """
    L, R = bounds
    support = np.flatnonzero(source.c != 0)
    ws, bs, cs = source.W[support, 0], source.b[support], source.c[support]
    w, b = network.W[rows, 0], network.b[rows]
    ks, k = np.clip(-bs / ws, L, R), np.clip(-b / w, L, R)
    # The cells of all breakpoints (not only those of ``rows``): the sums below then run over the
    # same cells whatever the share of rows, so a row's bits do not depend on the number of ranks.
    every = np.clip(-network.b / network.W[:, 0], L, R)
    z = np.unique(np.concatenate([[L, R], ks, every]))
    cells = z.size - 1
    ps, p = np.searchsorted(z, ks), np.searchsorted(z, k)
    linear = np.zeros((cells + 1, 2))  # (slope, intercept) of v per cell, one spare row
    right = ws > 0
    up, down = np.zeros_like(linear), np.zeros_like(linear)
    np.add.at(up, ps[right], np.column_stack([cs * ws, cs * bs])[right])
    np.add.at(down, ps[~right], np.column_stack([cs * ws, cs * bs])[~right])
    linear += np.cumsum(up, axis=0)
    linear[:-1] += np.cumsum(down[::-1], axis=0)[::-1][1:]
    slope, intercept = linear[:-1, 0], linear[:-1, 1]
    h, mid = np.diff(z), 0.5 * (z[1:] + z[:-1])
    value = slope * mid + intercept
    cell = np.column_stack([h * mid * value + slope * h**3 / 12, h * value])  # int x v, int v
    before = np.vstack([np.zeros((1, 2)), np.cumsum(cell, axis=0)])  # cells 0 .. p-1
    after = np.vstack([np.cumsum(cell[::-1], axis=0)[::-1], np.zeros((1, 2))])  # cells p ..
    out = np.where((w > 0)[:, None], after[p], before[p])
    lo, hi = np.where(w > 0, k, L), np.where(w > 0, R, k)
    squares = ((w * hi + b) ** 3 - (w * lo + b) ** 3) / (3 * w)
    return out, np.where(network.c[rows] != 0, squares, 0.0)


def _cancelling_2d(
    ctx: Context, network: Network, index: np.ndarray, every: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray | None]:
    """``c^T A c = int (sum_i c_i phi_i)^2`` in 2D with the magnitude of its rounding error, and
    stable ``int v h_i xhat`` for the neurons whose coefficients cancel.

    ``every`` holds ``loss_and_gradient``'s per-row terms of the neurons ``index`` (column 0:
    ``c_i (A c)_i``, column 3: ``|c_i| |phi_i|``). The neurons with ``|c_i| |phi_i|`` above
    ``CANCELLING`` times ``|u|`` (at most ``MAX_CANCELLING``, the largest: typically the pairs
    that sharpen a jump, with cancelling ``|c_i| ~ 1 / width``) form B, the others S:
    ``c^T A c = sum_(i in S) c_i (A c)_i + sum_(i in B) c_i (A c_S)_i + int v_B^2``, the last
    term, and ``int v_B h_i xhat`` for i in B, on the cells of B's lines
    (``polygon.relu_sum_integrals``). The rounding magnitude drops from ``(sum_i |c_i|
    |phi_i|)^2`` to ``m_S^2 + 2 m_B (m_S + |v_B|)`` (``m_X = sum_(i in X) |c_i| |phi_i|``):
    quadratic only in the moderate coefficients. Returns ``(c^T A c, magnitude, B,
    int v h_i xhat for B)`` (B empty and None when nothing cancels). Collective.
    """
    m = every[:, 3]
    reference = np.sqrt(ctx.target_norms[1]) or 1.0
    largest = np.argsort(-m, kind="stable")[:MAX_CANCELLING]
    big = np.sort(largest[m[largest] > CANCELLING * reference])
    if big.size == 0:
        return float(np.sum(every[:, 0])), float(np.sum(m) ** 2), index[big], None
    small = np.ones(m.size, dtype=bool)
    small[big] = False
    neurons = index[big]
    c = network.c.copy()
    c[neurons] = 0.0
    rows = owned_rows(ctx.comm, neurons)
    to_small = allrows(
        ctx.comm,
        network_moments(ctx.problem, network, rows, source=Network(network.W, network.b, c)),
    )
    cross = float(
        np.sum(np.einsum("ik,ik->i", network.c[neurons, None] * network.r[neurons], to_small))
    )
    square, own = relu_sum_integrals(
        ctx.problem.domain.vertices, network.W[neurons], network.b[neurons], network.c[neurons]
    )
    m_small, m_big = float(np.sum(m[small])), float(np.sum(m[big]))
    magnitude = m_small * m_small + 2 * m_big * (m_small + np.sqrt(max(square, 0.0)))
    return float(np.sum(every[small, 0])) + cross + square, magnitude, neurons, to_small + own


@dataclass(frozen=True)
class Gradient:
    """Loss and gradient of J at a network (user order).

    Attributes
    ----------
    loss, l2_error : float
        ``J`` and ``sqrt(2 J)``.
    moments : ndarray, shape (n, d+1)
        ``gtilde_i = int (v - u) h_i xhat`` (zero for neurons not asked for).
    c : ndarray, shape (n,)
        ``dJ/dc_i = gtilde_i . r_i``.
    c0 : float or None
        ``dJ/dc0 = int (v - u)`` (None without output bias).
    r : ndarray, shape (n, d+1)
        ``dJ/dr_i = c_i gtilde_i``.
    """

    loss: float
    l2_error: float
    moments: np.ndarray
    c: np.ndarray
    c0: float | None
    r: np.ndarray

    def norm(self, linear: bool = True) -> float:
        """2-norm over r, and over (c, c0) too when ``linear``."""
        total = float(np.sum(self.r**2))
        if linear:
            total += float(np.sum(self.c**2)) + (self.c0 or 0.0) ** 2
        return float(np.sqrt(total))


def loss_and_gradient(
    ctx: Context, network: Network, neurons: np.ndarray | None = None
) -> Gradient:
    """The exact loss and gradient of J in (c, c0, W, b). Collective.

    Gradient rows are computed for ``neurons`` (a mask, default all; the others get zero rows),
    which must include every neuron with ``c_i != 0``. The loss: 1D ``evaluate_loss``; otherwise
    from the same moments, ``2 J = c^T A c - 2 c^T F + 2 c0 c^T s + c0^2 |Omega| - 2 c0 int u +
    int u^2`` with ``(A c)_i = r_i . sum_j G_(i,j) c_j r_j`` (``A_(i,j) = r_i^T G_(i,j) r_j``),
    ``F_i = r_i . int u h_i xhat``, ``s_i = int phi_i``. In 2D, ``c^T A c`` and the moments of
    the neurons with large, cancelling coefficients come from ``_cancelling_2d``. The formula
    cancels, so it is not allowed below its rounding level, ``m eps`` times the magnitude of its
    terms (m the neurons summed over, ``neurons``; ``c^T A c``: ``(sum_i |c_i| |phi_i|)^2``, or
    ``_cancelling_2d``'s smaller bound), and a
    huge, cancelling c (from a solve with a numerically singular A) cannot pass for a good fit.
    Sums over neurons are taken over rows gathered in neuron order, so every rank count gives
    the same bits.
    """
    problem, comm = ctx.problem, ctx.comm
    domain = problem.domain
    index = np.arange(network.n) if neurons is None else np.flatnonzero(neurons)
    rows = owned_rows(comm, index)
    r, c, c0 = network.r, network.c, network.c0 or 0.0
    vm, squares = network_moments(problem, network, rows, diagonal=True)
    um = target_moments(domain, problem.target, network.W, network.b, rows)
    ones = (
        target_moments(domain, ONE, network.W, network.b, rows)
        if problem.output_bias or ctx.dim > 1
        else np.zeros_like(um)
    )
    cr, abs_cr = c[rows, None] * r[rows], np.abs(c[rows, None] * r[rows])
    terms = np.stack(
        [
            np.einsum("ik,ik->i", cr, vm),
            np.einsum("ik,ik->i", cr, um),
            np.einsum("ik,ik->i", cr, ones),
            np.abs(c[rows]) * np.sqrt(np.maximum(squares, 0.0)),
            np.einsum("ik,ik->i", abs_cr, np.abs(um)),
            np.einsum("ik,ik->i", abs_cr, np.abs(ones)),
        ],
        axis=1,
    )
    # One gather of every row's moments, network moments and terms.
    k = domain.dim + 1
    gathered = allrows(comm, np.hstack([vm + c0 * ones - um, vm, terms]))
    moments = np.zeros((network.n, k))
    moments[index] = gathered[:, :k]
    vm_all = np.zeros_like(moments)
    vm_all[index] = gathered[:, k : 2 * k]
    every = gathered[:, 2 * k :]
    cAc, cF, cs, c_phi, abs_cF, abs_cs = np.sum(every, axis=0)
    if ctx.dim == 1:
        loss, l2 = evaluate_loss(ctx, network)
    else:
        u_int, u_sq = ctx.target_norms
        square_magnitude = c_phi * c_phi
        if ctx.dim == 2:
            cAc, square_magnitude, big, stable = _cancelling_2d(ctx, network, index, every)
            if big.size:
                moments[big] += stable - vm_all[big]
        measure = domain.measure
        e2 = cAc - 2 * cF + 2 * c0 * cs + c0 * c0 * measure - 2 * c0 * u_int + u_sq
        magnitude = (
            square_magnitude
            + 2 * abs_cF
            + 2 * abs(c0) * abs_cs
            + c0 * c0 * measure
            + 2 * abs(c0 * u_int)
            + u_sq
        )
        e2 = float(max(e2, index.size * EPS * magnitude))
        loss, l2 = 0.5 * e2, float(np.sqrt(e2))
    g_c0 = float(cs + c0 * domain.measure - ctx.target_norms[0]) if problem.output_bias else None
    return Gradient(
        loss, l2, moments, np.einsum("ik,ik->i", moments, r), g_c0, c[:, None] * moments
    )
