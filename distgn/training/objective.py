"""The exact least-squares objective shared by SgGN and the baselines, and its MPI plumbing.

``J = 1/2 int (v - u)^2`` and its gradient in (c, c0, W, b) from exact pair integrals and target
moments (distgn.assembly): ``int v h_i xhat = sum_j c_j G_(i,j) r_j + c0 int h_i xhat``, so the
gradient in r_i is ``c_i int (v - u) h_i xhat`` and in c_i ``int (v - u) phi_i`` (MATH.md). The 1D
loss comes from direct Gauss rules between the breakpoints (``fit.l2_error_1d``: no cancellation,
it reaches round-off); in 2D from the same moments (it cancels at ~1e-16 of ``int u^2``).

Every rank holds the whole network (replicated, user order). Row-wise work is split into
contiguous shares (``owned_rows``) and the partial results are gathered and added in rank order
(``allsum``, ``allrows``), so every rank gets the same bits and takes the same decisions.
Functions taking a ``Context`` or a communicator are collective; the others are rank-local.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from mpi4py import MPI

from distgn.assembly import ONE, pair_integrals, target_integrals, target_moments
from distgn.config import SolverConfig
from distgn.errors import SolverError
from distgn.fit import l2_error_1d
from distgn.network import Network
from distgn.problem import Problem

EPS = float(np.finfo(float).eps)
CHUNK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class Context:
    """What every collective evaluation needs: the problem, the ranks and the linear solver."""

    problem: Problem
    comm: MPI.Comm
    solver: SolverConfig

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
    return index[edges[comm.rank]:edges[comm.rank + 1]]


def allsum(comm: MPI.Comm, values: np.ndarray | float) -> np.ndarray:
    """Sum over ranks, added in rank order so that every rank gets the same bits. Collective."""
    return np.sum(np.asarray(comm.allgather(np.asarray(values, dtype=float))), axis=0)


def allrows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order. Collective."""
    return np.concatenate(comm.allgather(local), axis=0)


def on_ranks(comm: MPI.Comm, count: int, work: Callable[[MPI.Comm], object]) -> object:
    """Run ``work(sub)`` on the first ``min(count, P)`` ranks and broadcast rank 0's result.

    A cluster tree needs at least one neuron per rank, so small systems are solved on fewer ranks.
    Collective over ``comm``.
    """
    if count >= comm.size:
        return work(comm)
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


def pair_rows(problem: Problem, network: Network, rows: np.ndarray, columns: np.ndarray,
              which: tuple[str, ...]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows chunk, pair integrals)`` of bounded size. Rank-local.

    Every row is computed (and contracted with numpy's plain ``einsum`` by the callers) the same
    way whatever the chunk, so row results do not depend on the number of ranks.
    """
    k = problem.domain.dim + 1
    per_row = max(1, columns.size * (k * k if "G" in which else 1))
    step = max(1, CHUNK_ENTRIES // per_row)
    for lo in range(0, rows.size, step):
        chunk = rows[lo:lo + step]
        yield chunk, pair_integrals(problem.domain, network.W, network.b, chunk, columns, which)


def evaluate_loss(ctx: Context, network: Network) -> tuple[float, float]:
    """``(J, L2 error)``, ``J = 1/2 int (v - u)^2``. Collective.

    1D: direct Gauss rules on the cells between breakpoints (no cancellation, reaches round-off).
    Otherwise the exact-matrix formula ``c^T A c - 2 c^T F + 2 c0 c^T s + c0^2 |Omega| - 2 c0 int
    u + int u^2``, which cancels: it is not allowed below its rounding level, ``n eps`` times the
    magnitude of its terms (``|c|^T A |c|``, ...), so that a huge, cancelling c (e.g. from a solve
    with a numerically singular A) cannot pass for a good fit.
    """
    problem, comm = ctx.problem, ctx.comm
    c, c0 = network.c, network.c0 or 0.0
    if ctx.dim == 1:
        l2 = l2_error_1d(problem.domain.bounds, network.W, network.b, c, network.c0,
                         problem.target)
        return 0.5 * l2 * l2, l2
    support = np.flatnonzero(c != 0)
    rows = owned_rows(comm, support)
    cAc, abs_cAc = np.zeros(rows.size), np.zeros(rows.size)
    offset = 0
    for chunk, part in pair_rows(problem, network, rows, support, ("A",)):
        cAc[offset:offset + chunk.size] = c[chunk] * (part["A"] @ c[support])
        abs_cAc[offset:offset + chunk.size] = np.abs(c[chunk]) * (part["A"] @ np.abs(c[support]))
        offset += chunk.size
    r = network.r
    cF = c[rows] * np.einsum("ik,ik->i", target_moments(problem.domain, problem.target,
                                                        network.W, network.b, rows), r[rows])
    cs = c[rows] * np.einsum("ik,ik->i", target_moments(problem.domain, ONE, network.W,
                                                        network.b, rows), r[rows])
    sums = allsum(comm, [np.sum(cAc), np.sum(cF), np.sum(cs), np.sum(abs_cAc),
                         np.sum(np.abs(cF)), np.sum(np.abs(cs))])
    (cAc, cF, cs, abs_cAc, abs_cF, abs_cs), (u_int, u_sq) = sums, ctx.target_norms
    measure = problem.domain.measure
    e2 = cAc - 2 * cF + 2 * c0 * cs + c0 * c0 * measure - 2 * c0 * u_int + u_sq
    magnitude = (abs_cAc + 2 * abs_cF + 2 * abs(c0) * abs_cs + c0 * c0 * measure
                 + 2 * abs(c0 * u_int) + u_sq)
    e2 = float(max(e2, network.n * EPS * magnitude))
    return 0.5 * e2, float(np.sqrt(e2))


def network_moments(problem: Problem, network: Network, rows: np.ndarray,
                    source: Network | None = None) -> np.ndarray:
    """``int v h_i xhat`` for neurons ``rows`` of ``network``, shape (|rows|, d+1). Rank-local.

    v is the function of ``source`` (default: ``network`` itself):
    ``int v h_i xhat = sum_j c_j G_(i,j) r_j + c0 int h_i xhat`` (exact pair integrals).
    """
    source = network if source is None else source
    support = np.flatnonzero(source.c != 0)
    both = Network(np.vstack([network.W, source.W[support]]),
                   np.concatenate([network.b, source.b[support]]))
    columns = network.n + np.arange(support.size)
    cr = source.c[support, None] * source.r[support]
    out = np.zeros((rows.size, problem.domain.dim + 1))
    offset = 0
    for chunk, part in pair_rows(problem, both, rows, columns, ("G",)):
        out[offset:offset + chunk.size] = np.einsum("ijkl,jl->ik", part["G"], cr)
        offset += chunk.size
    if source.c0:
        out += source.c0 * target_moments(problem.domain, ONE, network.W, network.b, rows)
    return out


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


def loss_and_gradient(ctx: Context, network: Network, neurons: np.ndarray | None = None
                      ) -> Gradient:
    """The exact loss and gradient of J in (c, c0, W, b). Collective.

    Gradient rows are computed for ``neurons`` (a mask, default all; the others get zero rows),
    which must include every neuron with ``c_i != 0``. The loss is ``evaluate_loss``.
    """
    problem, comm = ctx.problem, ctx.comm
    domain = problem.domain
    index = np.arange(network.n) if neurons is None else np.flatnonzero(neurons)
    rows = owned_rows(comm, index)
    r, c, c0 = network.r, network.c, network.c0 or 0.0
    vm = network_moments(problem, network, rows)
    um = target_moments(domain, problem.target, network.W, network.b, rows)
    moments = np.zeros((network.n, domain.dim + 1))
    moments[index] = allrows(comm, vm - um)
    loss, l2 = evaluate_loss(ctx, network)
    g_c0 = None
    if problem.output_bias:
        mass = np.einsum("ik,ik->i", target_moments(domain, ONE, network.W, network.b, rows),
                         r[rows])
        v_int = allsum(comm, np.sum(c[rows] * mass)) + c0 * domain.measure
        g_c0 = float(v_int - ctx.target_norms[0])
    return Gradient(loss, l2, moments, np.einsum("ik,ik->i", moments, r), g_c0,
                    c[:, None] * moments)
