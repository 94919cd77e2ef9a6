"""The linear least-squares step: output weights c (and bias c0) for fixed (W, b); the fit error.

1D (``solver.basis = "auto"``, the default): the least-squares problem is solved in the value
coordinates of the neurons' span (``distgn.operator.nodal_operator``, docs/large-n.md): the
configured back end factors the well-conditioned nodal system ``K y = f`` (f by quadrature of u
against the local basis), the bias is part of the span, c and c0 follow from the values by
differencing, and the fit error is the quadrature of ``(v - u)^2`` from the nodal values.

Otherwise (2D and up, or ``solver.basis = "relu"``): normal equations
``[[A, s], [s^T, |Omega|]] [c; c0] = [F; int u]`` with ``s_i = int phi_i``, the bias eliminated by
block elimination on two solves with A (``A x1 = F``, ``A x2 = s``); with
``solver.regularization`` = delta > 0, A is replaced by ``A + delta diag(A)``
(docs/regularization.md). The fit error is computed by Gauss rules between breakpoints in 1D, and
in 2D from the exact matrices,
``e^2 = ||u||^2 - 2 c^T F + c^T A c`` (+ bias terms): this cancels, so it is reported with its
rounding level (``fit_l2_error_floor``), and where ``e^2`` is below that level the floor is reported
as an upper bound instead of clipping to zero.
``solve_output_weights`` is collective; ``l2_error_1d`` is rank-local, or collective with a
communicator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from distgn.assembly import BlockRows, exact1d, target_integrals
from distgn.config import SolverConfig
from distgn.errors import ConvergenceError, InputError
from distgn.operator import Operator, local_gaussian, nodal_operator, regularised, uses_nodal
from distgn.parallel import log
from distgn.problem import Problem
from distgn.solvers import backward_error, factor
from distgn.targets import Target

FORWARD_ITERATIONS = 8
# ||v - v*||_L2 <= RESIDUAL_TO_ERROR ||K y - P f||_2 for the nodal system: on the span K is the
# diagonally scaled P1 mass matrix, whose eigenvalues lie in [1/2, 3/2] (docs/large-n.md), and the
# identity on N, so ||y - y*|| <= 2 ||residual|| and the L2 norm is at most sqrt(3/2) times that.
RESIDUAL_TO_ERROR = 2.0 * np.sqrt(1.5)


@dataclass(frozen=True)
class OutputWeights:
    """Solution of the linear least-squares problem.

    Attributes
    ----------
    c : ndarray, shape (m,)
        This rank's output weights: its block rows of the neuron tree (``operator.gather`` of
        the neuron-basis operator gives all of them, in tree order).
    c0 : float or None
        Output bias (None without one).
    l2_error : float
        ``sqrt(int (v - u)^2)``.
    backward_error : float
        ``||A c - f|| / (||A|| ||c|| + ||f||)`` of the solve with A.
    stats : dict
        The solver's statistics (distgn.solvers.base).
    """

    c: np.ndarray
    c0: float | None
    l2_error: float
    backward_error: float
    stats: dict


def solve_output_weights(
    problem: Problem,
    blocks: BlockRows,
    operator: Operator,
    config: SolverConfig,
    forward_error: bool = False,
) -> OutputWeights:
    """Solve the least-squares problem for c (and c0) with the configured solver. Collective.

    The neuron-basis path solves ``(A + delta diag(A)) c = F`` with the ridge delta =
    ``solver.regularization`` (0: none; docs/regularization.md; statistics ``regularization`` and
    ``regularization_term`` = ``sqrt(delta sum_i A_ii c_i^2)``, the penalty in the units of the fit
    error); backward error and condition estimate are those of the shifted matrix, the fit error
    is that of c. With ``forward_error`` it also estimates the relative forward error of c,
    ``cond * backward error`` with ``||A^{-1}||`` from ``FORWARD_ITERATIONS`` power steps with the
    factorization (statistics ``cond_estimate``, ``forward_error_estimate``), and warns (one line,
    rank 0) when it exceeds the requested tolerance (``solver.rtol`` for krylov, else
    ``solver.tol``).
    """
    if uses_nodal(problem, config, operator.name):
        return _solve_nodal(problem, operator, config)
    comm = operator.comm
    F = blocks.F
    rhs = np.column_stack([F, blocks.mass]) if problem.output_bias else F
    u_int, u_sq = target_integrals(problem.domain, problem.target)
    c0 = None
    with regularised(operator, config.regularization) as shifted, factor(shifted, config) as solver:
        x = solver.solve(rhs)
        stats = solver.stats()
        inverse = inverse_norm_estimate(shifted, solver) if forward_error else None
        if problem.output_bias:
            sx = comm.allreduce(blocks.mass @ x)
            c0 = float((u_int - sx[0]) / (problem.domain.measure - sx[1]))
            x = x[:, 0] - c0 * x[:, 1]
        norm = shifted.norm_estimate()
        berr = backward_error(shifted, x, F - (c0 or 0.0) * blocks.mass, norm)
        if config.regularization:
            penalty = comm.allreduce(float(x @ (shifted.shift * x)))
            stats = {
                **stats,
                "regularization": config.regularization,
                "regularization_term": float(np.sqrt(penalty)),
            }
    if inverse is not None:
        cond = norm * inverse
        requested = config.rtol if config.kind == "krylov" else config.tol
        stats = {**stats, "cond_estimate": cond, "forward_error_estimate": cond * berr}
        if cond * berr > requested and comm.rank == 0:
            log.warning(
                f"fit: the estimated relative forward error of c, cond(A) {cond:.1e} x "
                f"backward error {berr:.1e} = {cond * berr:.1e}, is above the requested "
                f"tolerance {requested:.0e}"
            )
    if problem.domain.dim == 1:
        # Gauss rules between all breakpoints, each rank over its own cells
        W, b = operator.own_neurons()
        l2 = l2_error_1d(problem.domain.bounds, W, b, x, c0, problem.target, operator.comm)
    else:
        Ac = operator.matvec(x)
        parts = comm.allreduce(np.array([x @ Ac, x @ F, x @ blocks.mass]))
        m0 = c0 or 0.0
        terms = np.array(
            [
                parts[0],
                2 * m0 * parts[2],
                m0**2 * problem.domain.measure,
                -2 * parts[1],
                -2 * m0 * u_int,
                u_sq,
            ]
        )
        e2 = float(np.sum(terms))
        # Each term carries a relative rounding error of a few eps (the exact integrals and the
        # products): e^2 below that level is not resolved.
        floor = float(64 * np.finfo(float).eps * np.sum(np.abs(terms)))
        stats = {
            **stats,
            "fit_l2_error_floor": float(np.sqrt(floor)),
            "fit_l2_error_resolved": bool(e2 > floor),
        }
        l2 = float(np.sqrt(e2)) if e2 > floor else float(np.sqrt(floor))
    return OutputWeights(x, c0, l2, berr, stats)


def inverse_norm_estimate(operator: Operator, solver: object) -> float:
    """``||M^{-1}||`` estimated by power steps with a factorization's solve (NaN when an
    iterative solve fails). Collective."""
    start, stop = operator.local_range
    x = local_gaussian(2, start, stop, 1)[:, 0]
    value = np.nan
    try:
        for _ in range(FORWARD_ITERATIONS):
            x = x / np.sqrt(operator.comm.allreduce(float(x @ x)))
            x = solver.solve(x)
            value = float(np.sqrt(operator.comm.allreduce(float(x @ x))))
    except ConvergenceError:
        return np.nan
    return value


def _solve_nodal(problem: Problem, operator: Operator, config: SolverConfig) -> OutputWeights:
    """The 1D least-squares solve in value coordinates (module docstring). Collective.

    A Krylov solve runs to ``solver.rtol`` as given. Its part of the fit error is at most
    ``RESIDUAL_TO_ERROR`` times the true residual ``||K y - P f||`` (statistic
    ``solver_error_bound``); when that bound exceeds the fit error itself, the tolerance may be
    what limits the fit, and rank 0 logs a one-line warning (the nodal system's condition number
    is at most a few, so a tighter ``solver.rtol`` costs a few iterations; the best fit falls like
    n^-2 for smooth targets, ~1e-12 at n = 2^20). Statistic ``seconds_assemble_nodal``: the
    construction of the system (its stored rows unless matrix-free) and of its right-hand side.
    """
    if config.regularization:
        raise InputError(
            f"config key solver.regularization = {config.regularization:g} applies to the neuron "
            'basis only (2D and up, or solver.basis = "relu"); the 1D value coordinates need none'
        )
    start = time.perf_counter()
    nodal = nodal_operator(operator, config, problem.output_bias)
    system = nodal.system
    rhs = system.right_hand_side(problem.target)
    seconds = nodal.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    with factor(nodal, config) as solver:
        x = solver.solve(rhs)
        stats = solver.stats()
    berr = backward_error(nodal, x, rhs, nodal.norm_estimate())
    # The exact solution lies in the span; a solver's error along N (outside it) would be
    # amplified by the differencing B, so it is removed first.
    values = system.span.project(x[:, None])
    local = system.coefficients(values)[:, 0]
    m = operator.local_range[1] - operator.local_range[0]
    c0 = None
    if problem.output_bias:
        last = nodal.comm.size - 1
        c0 = float(nodal.comm.bcast(local[m] if nodal.comm.rank == last else None, root=last))
    l2 = system.l2_error(values[:, 0], problem.target)
    stats = {
        **stats,
        "basis": "nodal",
        "seconds_assemble_nodal": seconds,
        "nodal_size": nodal.size,
        "nodal_constraints": int(system.span.null.shape[1]),
    }
    if "true_relative_residual" in stats:
        rhs_norm = float(np.sqrt(nodal.comm.allreduce(float(rhs @ rhs))))
        bound = RESIDUAL_TO_ERROR * stats["true_relative_residual"] * rhs_norm
        stats["solver_error_bound"] = bound
        if bound > l2 and nodal.comm.rank == 0:
            log.warning(
                f"fit: the Krylov solve may contribute up to {bound:.1e} to the fit error "
                f"{l2:.1e} (true relative residual {stats['true_relative_residual']:.1e}, "
                f"solver.rtol = {config.rtol:g}); a smaller solver.rtol resolves the fit"
            )
    return OutputWeights(local[:m], c0, l2, berr, stats)


def cell_errors_1d(
    bounds: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    c0: float | None,
    target: Target,
    window: tuple[float, float] | None = None,
    outside: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """The cells between all breakpoints (and the target's features) and the cumulative squared
    error ``int_{nodes[0]}^{nodes[k]} (v - u)^2`` by Gauss rules per cell: ``(nodes (K + 1,),
    cumulative (K + 1,))``.

    v is piecewise linear with kinks at the breakpoints: its slope and value on each cell come from
    prefix sums over sorted breakpoints, so the cost is O(n log n + cells x points). With
    ``window = (a, z)`` only the cells of ``[a, z]``, where ``outside = (slope, intercept)`` is
    added: the part of v of neurons not given, active on all of the window. Rank-local.
    """
    w = W[:, 0]
    t = -b / w
    nodes = exact1d.quadrature_nodes(bounds, t, target)
    if window is not None:
        inside = nodes[(nodes > window[0]) & (nodes < window[1])]
        nodes = np.concatenate([[window[0]], inside, [window[1]]])
    # v(x) = c0 + sum_i c_i relu(w_i (x - t_i)): on a cell, each neuron is either linear or zero.
    # A neuron with w > 0 is on right of t, with w < 0 on the left; accumulate slopes/intercepts.
    mids = 0.5 * (nodes[1:] + nodes[:-1])
    slope = np.full(mids.size, outside[0])
    icept = np.full(mids.size, (c0 or 0.0) + outside[1])
    for sign in (1.0, -1.0):
        sel = np.sign(w) == sign
        tt, cw, cb = t[sel], (c * w)[sel], (c * b)[sel]
        order = np.argsort(tt)
        tt, cw, cb = tt[order], cw[order], cb[order]
        k = np.searchsorted(tt, mids)  # neurons with t < mid are active when w > 0
        cs_w = np.concatenate([[0.0], np.cumsum(cw)])
        cs_b = np.concatenate([[0.0], np.cumsum(cb)])
        if sign > 0:
            slope += cs_w[k]
            icept += cs_b[k]
        else:
            slope += cs_w[-1] - cs_w[k]
            icept += cs_b[-1] - cs_b[k]

    def residual_squared(x: np.ndarray) -> np.ndarray:
        cell = np.clip(np.searchsorted(nodes, x[:, 0]) - 1, 0, mids.size - 1)
        return (slope[cell] * x[:, 0] + icept[cell] - target(x)) ** 2

    return nodes, exact1d.cumulative_moments(nodes, residual_squared, 1)[:, 0]


def l2_error_1d(
    bounds: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    c0: float | None,
    target: Target,
    comm: MPI.Comm | None = None,
) -> float:
    """``sqrt(int (v - u)^2)`` on an interval, from ``cell_errors_1d`` (a sum of nonnegative
    terms). Rank-local; with ``comm`` each rank gives its own neurons, a contiguous block of the
    breakpoint order, and integrates from its first breakpoint to the next rank's (rank 0 from L,
    the last to R), with the sums of ``c w`` and ``c b`` of the other ranks' neurons active
    there (right-facing ones below, left-facing ones above: one Allgather of 5 numbers per rank)
    and the squares summed over ranks (collective)."""
    if comm is None or comm.size == 1:
        total = cell_errors_1d(bounds, W, b, c, c0, target)[1][-1]
        return float(np.sqrt(max(total, 0.0)))
    L, R = float(bounds[0, 0]), float(bounds[0, 1])
    w = W[:, 0]
    first = float(np.clip(-b[0] / w[0], L, R)) if w.size else R
    right, left = w > 0, w < 0
    record = np.array(
        [
            first,
            np.sum((c * w)[right]),
            np.sum((c * b)[right]),
            np.sum((c * w)[left]),
            np.sum((c * b)[left]),
        ]
    )
    table = np.empty((comm.size, 5))
    comm.Allgather(record, table)
    rank = comm.rank
    starts = np.concatenate([[L], table[1:, 0], [R]])
    below, above = table[:rank], table[rank + 1 :]
    outside = (
        float(np.sum(below[:, 1]) + np.sum(above[:, 3])),
        float(np.sum(below[:, 2]) + np.sum(above[:, 4])),
    )
    window = (float(starts[rank]), float(max(starts[rank + 1], starts[rank])))
    local = 0.0
    if window[1] > window[0]:
        local = cell_errors_1d(bounds, W, b, c, c0, target, window, outside)[1][-1]
    total = comm.allreduce(float(local))
    return float(np.sqrt(max(total, 0.0)))
