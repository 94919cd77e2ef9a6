"""The structure-guided Gauss-Newton (SgGN) iteration: c-solve, Gauss-Newton direction with the
layer matrix G, removal of singular components, line search.

Parametrisation
---------------
``v(x) = c0 + sum_i c_i relu(w_i . x + b_i)``. The linear parameters c (and c0) are solved for at
every iterate; the nonlinear ones ``r_i = (w_i, b_i)`` take a damped Gauss-Newton step. ReLU is
positively homogeneous, so each neuron carries one redundant scale; it is fixed by renormalising
every neuron to ``|w_i| = 1`` after each step (``c_i`` multiplied by the old ``|w_i|``, v
unchanged). The stored state is therefore

- 1D: a breakpoint ``t_i = -b_i / w_i`` with an orientation ``s_i = w_i = +-1``;
- 2D and up: a unit normal ``w_i`` (the direction) and an offset ``b_i``
  (the line ``w_i . x + b_i = 0``).

The iteration is well posed in these coordinates: with c solved for, the scale of a neuron is no
free direction of the c-solve, and with c fixed, ``D G D`` is nonsingular once the singular
components below are removed.

The step
--------
With c fixed the Jacobian of v in r_i is ``c_i h_i xhat`` and the Gauss-Newton matrix is ``D G D``
(MATH.md), so the direction is ``p = -D^{-1} G^{-1} gtilde``, ``gtilde_i = int (v - u) h_i xhat``:
one solve with G over the moving neurons (``solvers.factor``, the configured back end), then a
scaling by ``1/c_i``. ``y = -G^{-1} gtilde`` is the Gauss-Newton step in ``a_i = c_i r_i``, which
is also Kaufman's variable-projection step (the joint step in (c, r) at ``c = c*(r)``; ``c_i phi_i =
c_i h_i xhat . r_i`` lies in the span of the r-Jacobian). The path is ``r + gamma p`` (linear in
``a_i`` while c is fixed), renormalised; in 1D a breakpoint goes through infinity and the neuron
changes orientation when ``w_i + gamma p_w,i`` changes sign. The variants differ in what the line
search minimises:

- ``"alternating"``: ``J(c, r + gamma p)`` with c fixed, then c is solved for at the new r;
- ``"varpro"``: the projected loss ``min_c J(c, r + gamma p)``; every trial point is a c-solve.

The step length is the minimiser along the path (``line_minimum``): bracketing from ``gamma = 1``
(expanding by the golden ratio while the loss decreases, backtracking by safeguarded quadratic
interpolation until it decreases, giving up where the predicted decrease is below J's rounding
level), then the zero of the exact derivative ``dJ/dgamma = grad_r J . p`` in the bracket by
Brent's root finder, to relative accuracy 4 eps (function values alone resolve a minimiser only
to ``sqrt(eps)``, which would let serial and parallel runs drift apart). J is only piecewise
smooth along the path (kinks where breakpoints cross each other or the target's
discontinuities): a derivative that jumps from < 0 to > 0 within 1e-8 of the best bracket point
is a kink minimum, taken at once (Gauss-Newton steps often end on one: a breakpoint landing on a
jump of u); where the derivative does not change sign in the bracket, Brent's minimiser on J. The
loss at the start of the search is evaluated by the same function as the trial points
(alternating variant), so that rounding differences between the c-solve's loss and J cannot
reject a descent direction. Each slope evaluation also yields J there. There is no cap at 1 and
no tuned damping constant. When no step decreases the loss, the direction is recomputed on the
next deflation rung (below) before the iteration gives up.

Singular components
-------------------
Before each solve the neurons that make the matrix numerically singular are set aside; the counts
are reported per iteration:

- dead neurons (hyperplane outside the domain, or ``w_i = 0``): removed for good, ``c_i = 0``,
  recorded in the run file;
- GN step only: ``|c_i| <= drop_tol max|c|`` (D singular): not moved;
- coincident hyperplanes (``independent_neurons``): two neurons delta apart give the matrix an
  eigenvalue ~ ``delta^power`` (``SINGULAR_POWERS``), so they count as coincident below
  ``eps^(1/power)``; a cluster keeps one neuron per orientation; a cluster with both orientations,
  like a neuron active on the whole domain, generates affine functions, and only an independent
  set of generators is kept. When the solver still breaks down, the next of ``DEFLATION_RUNGS``
  rungs raises the tolerances and the solve is retried.

Neurons set aside from the c-solve keep their previous coefficient ("deflated": the solve fits
``u`` minus their contribution). A c-solve that comes out worse than the previous c at the same
W, b (possible when A is singular to working precision) is rejected and the previous c kept, so the
loss never increases; deflations, rejections and rungs are counted in the history. This keeps the
c-solve correct when neurons coalesce around a jump (coefficients ~ 1/delta).

Functions taking a ``Context`` are collective over ``ctx.comm`` (every rank holds the whole
network; distgn.objective makes the ranks agree bit for bit). ``normalise``, ``dead_neurons``,
``coincident_clusters``, ``independent_neurons`` and ``line_minimum`` (given a collective
``phi``) are rank-local.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.optimize
from mpi4py import MPI
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from distgn.assembly import assemble_block_rows
from distgn.config import SolverConfig, TrainConfig
from distgn.errors import SolverError
from distgn.fit import solve_output_weights
from distgn.network import Network, activity
from distgn.objective import (
    EPS,
    Context,
    Gradient,
    evaluate_loss,
    loss_and_gradient,
    network_moments,
    on_ranks,
)
from distgn.operator import operator_from_block_rows
from distgn.parallel import log
from distgn.problem import Problem
from distgn.solvers import factor
from distgn.targets import Target
from distgn.tree import build_tree, neuron_order

GOLDEN = (1 + 5**0.5) / 2
# Relative accuracy of the line minimiser's root finder: to rounding, so that serial and
# parallel runs (whose slopes differ in the last digits) find the same step.
ROOT_RTOL = 4 * EPS
# A sign change of the slope within KINK_RTOL of the best bracket point is taken as a kink there.
KINK_RTOL = 1e-8
VARIANTS = ("alternating", "varpro")


# ---------------------------------------------------------------------------------------------
# Parametrisation and singular components (rank-local)


def normalise(network: Network) -> Network:
    """Rows scaled to ``|w_i| = 1`` with ``c_i`` rescaled, so v is unchanged (rows w = 0 kept)."""
    scale = np.linalg.norm(network.W, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    c = None if network.c is None else network.c * scale
    return replace(network, W=network.W / scale[:, None], b=network.b / scale, c=c)


def dead_neurons(problem: Problem, network: Network) -> np.ndarray:
    """Neurons active nowhere in the domain (including ``w_i = 0``)."""
    dead, _ = activity(network.W, network.b, problem.domain)
    return dead | np.all(network.W == 0, axis=1)


def _hyperplane_points(problem: Problem, network: Network) -> tuple[np.ndarray, float]:
    """Each neuron's normalised hyperplane ``(w, b + w . centre) / |w|`` and the domain radius."""
    domain = problem.domain
    radius = 0.5 * float(np.linalg.norm(domain.bounds[:, 1] - domain.bounds[:, 0]))
    norm = np.linalg.norm(network.W, axis=1)
    unit = network.W / norm[:, None]
    offset = (network.b / norm + unit @ domain.center) / radius
    return np.column_stack([unit, offset]), radius


def _extents(problem: Problem, network: Network) -> tuple[np.ndarray, np.ndarray]:
    """How far each neuron's active and inactive parts reach into the domain (relative to its
    radius): the largest positive and negative distances of the domain's corners from the
    hyperplane (0 when the part is empty)."""
    points, radius = _hyperplane_points(problem, network)
    corners = problem.domain.corners
    distance = ((corners - problem.domain.center) / radius) @ points[:, :-1].T + points[:, -1]
    return np.maximum(distance.max(axis=0), 0.0), np.maximum(-distance.min(axis=0), 0.0)


def coincident_clusters(problem: Problem, network: Network, index: np.ndarray,
                        tau_same: float, tau_opposite: float) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of (nearly) coincident hyperplanes among the neurons ``index``. Rank-local.

    Two neurons are linked when their normalised hyperplanes are within ``tau_same`` (same
    orientation) or ``tau_opposite`` (opposite orientations); clusters are the connected components.

    Returns
    -------
    label : ndarray of int, shape (|index|,)
        Cluster of each neuron.
    sign : ndarray, shape (|index|,)
        +1 or -1: the orientation relative to the first neuron of its cluster.
    """
    points, _ = _hyperplane_points(problem, network.subset(index))
    m = index.size
    # Both orientations of every hyperplane, so a pair is found whichever way each neuron faces.
    both = np.vstack([points, -points])
    pairs = cKDTree(both).query_pairs(max(tau_same, tau_opposite), output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    same = (a < m) == (b < m)
    distance = np.linalg.norm(both[a] - both[b], axis=1)
    link = (a % m != b % m) & (distance <= np.where(same, tau_same, tau_opposite))
    graph = coo_matrix((np.ones(int(link.sum())), (a[link] % m, b[link] % m)), shape=(m, m))
    _, label = connected_components(graph, directed=False)
    first = np.zeros(label.max(initial=-1) + 1, dtype=int)
    first[label[::-1]] = np.arange(m)[::-1]
    sign = np.where(np.einsum("ij,ij->i", points[:, :-1], points[first[label], :-1]) >= 0, 1, -1)
    return label, sign


# Smallest eigenvalue of a matrix with two neurons whose hyperplanes are delta apart ~ delta^power,
# for (same, opposite) orientations. A: phi_i - phi_j = O(delta) everywhere, relu(z) - relu(-z') - z
# = O(delta) on a strip of width delta; G: (h_i -+ h_j)(xhat . r) = O(delta) on such a strip.
# Coincidence tolerance eps^(1/power) on rung 0; each further rung (used when the solver still
# breaks down, e.g. for triples, whose eigenvalue decays faster) adds 1 to the power.
SINGULAR_POWERS = {"A": (2, 3), "G": (2, 3)}
# A neuron active (or inactive) only on a strip of width delta along the boundary: phi_i (or
# relu(-z)), and h_i (xhat . r) on the strip, are O(delta^1.5) in L2.
THIN_POWER = 3
DEFLATION_RUNGS = 3


def _generated(matrix: str, vector: np.ndarray, everywhere: bool) -> np.ndarray:
    """Rows spanning the affine functions that a generator adds to ``matrix``'s feature span.

    A cluster with both orientations generates ``z = r . xhat`` (its hyperplane), and so does a
    neuron active on the whole domain in A. In G a neuron with ``h = 1`` on the whole domain, or
    two opposite ones on the same hyperplane (``h_i + h_j = 1``; ``everywhere``), bring every
    ``xhat_k``; two opposite ones delta apart bring ``xhat . r`` up to O(delta^1.5), the other
    ``xhat_k`` only up to O(delta^0.5).
    """
    k = vector.size
    if matrix == "G" and everywhere:
        return np.eye(k)
    return vector[None, :] / np.linalg.norm(vector)


def independent_neurons(problem: Problem, network: Network, candidates: np.ndarray, matrix: str,
                        priority: np.ndarray | None = None, rung: int = 0) -> np.ndarray:
    """The neurons among ``candidates`` (mask) that keep ``matrix`` ("A" or "G") nonsingular.

    A neuron active on a part of the domain thinner than ``eps^(1/(THIN_POWER + rung))`` (relative
    to the domain radius) is left out, and one inactive on such a thin part counts as active on
    the whole domain (both are singular to working precision like a coincident pair). Hyperplanes
    closer than ``eps^(1/(power + rung))`` (``SINGULAR_POWERS``) are coincident; a
    cluster of coincident hyperplanes keeps at most one neuron per orientation, in the order of
    ``priority`` (default ``|c_i|``, highest first). Affine generators (``_generated``) are then
    kept in that order while their spans stay independent (relative tolerance ``eps^(1/3)``) of
    those kept before (and, in A, of the constant when c0 is used); for a dependent one the neuron
    (or the cluster member of lower priority) is dropped. Rank-local.
    """
    thin = EPS ** (1 / (THIN_POWER + rung))
    active, inactive = _extents(problem, network)
    index = np.flatnonzero(candidates & (active > thin))
    keep = np.zeros(network.n, dtype=bool)
    if index.size == 0:
        return keep
    same, opposite = (EPS ** (1 / (power + rung)) for power in SINGULAR_POWERS[matrix])
    c = np.zeros(network.n) if network.c is None else np.abs(network.c)
    c = c if priority is None else priority
    order = np.argsort(-c[index], kind="stable")
    label, sign = coincident_clusters(problem, network, index, same, opposite)
    points, _ = _hyperplane_points(problem, network.subset(index))
    affine = inactive[index] <= thin
    taken: dict[tuple[int, int], int] = {}
    for pos in order:
        taken.setdefault((int(label[pos]), int(sign[pos])), int(pos))
    kept = np.zeros(index.size, dtype=bool)
    kept[list(taken.values())] = True
    # Affine generators in priority order: (position to drop if dependent, spanned rows).
    full = EPS ** (1 / (1 + rung)) if matrix == "G" else -1.0
    generators = []
    for pos in order:
        partner = taken.get((int(label[pos]), -int(sign[pos])))
        if kept[pos] and affine[pos]:
            generators.append((pos, _generated(matrix, points[pos], True)))
        elif kept[pos] and partner is not None and sign[pos] > 0:
            drop = pos if c[index[pos]] < c[index[partner]] else partner
            exact = np.linalg.norm(points[pos] + points[partner]) <= full
            generators.append((drop, _generated(matrix, points[pos], exact)))
    k = problem.domain.dim + 1
    basis = np.eye(k)[-1:] if problem.output_bias and matrix == "A" else np.zeros((0, k))
    tolerance = EPS ** (1 / 3)
    for drop, rows in generators:
        residual = rows - (rows @ basis.T) @ basis
        if np.linalg.norm(residual, 2) > tolerance and basis.shape[0] + rows.shape[0] <= k:
            basis = np.vstack([basis, np.linalg.qr(residual.T)[0].T])
        else:
            kept[drop] = False
    keep[index[kept]] = True
    return keep


# ---------------------------------------------------------------------------------------------
# The c-solve


@dataclass(frozen=True)
class OutputSolve:
    """Result of the c-solve at fixed (W, b).

    Attributes
    ----------
    network : Network
        The network with the new c (and c0); deflated neurons keep their previous ``c_i``.
    loss, l2_error : float
        ``J`` and ``sqrt(int (v - u)^2)`` with the new c.
    backward_error : float
        Of the solve with A (nan when rejected or failed).
    deflated : int
        Neurons set aside as (nearly) coincident or dependent.
    rejected : bool
        The solve was worse than the previous c (or the solver failed); the previous c was kept.
    seconds : float
        Wall time of the factorization and solves.
    rung : int
        The deflation rung used (``DEFLATION_RUNGS``).
    stats : dict
        The solver's statistics.
    """

    network: Network
    loss: float
    l2_error: float
    backward_error: float
    deflated: int
    rejected: bool
    seconds: float
    rung: int = 0
    stats: dict = field(default_factory=dict)


def residual_target(problem: Problem, reference: Network) -> Target:
    """``u - v_ref`` as a target: u's declared features plus, in 1D, the breakpoints of the
    reference network (so that the 1D Gauss rules stay exact on it)."""
    u = problem.target
    if reference.n == 0 and not reference.c0:
        return u
    points = u.points
    if problem.domain.dim == 1:
        points = points + tuple(reference.breakpoints()[reference.c != 0])
    return replace(u, name=f"{u.name} minus the reference fit", points=points,
                   func=lambda x: u(x) - reference.evaluate(x))


def solve_output(ctx: Context, network: Network, live: np.ndarray,
                 previous_loss: float | None = None) -> OutputSolve:
    """Least-squares c (and c0) for the live neurons of ``network``, with deflation. Collective.

    ``network.c`` is the previous c. Neurons set aside by ``independent_neurons(..., "A")`` keep
    it (frozen); when the solver breaks down, the next rung of ``DEFLATION_RUNGS`` sets more
    aside. The solve fits the residual ``u - v_ref`` of a reference part of the previous fit and
    adds the correction to it: in 1D the whole previous fit (iterative refinement: the right-hand
    side ``int (u - v_ref) phi_i`` comes from exact Gauss rules on the residual, with no
    cancellation, so large coefficients of coalescing neurons cost no accuracy), otherwise the
    frozen neurons only (their ``int v_F h_i xhat`` from exact pair integrals; with an output bias,
    fit's ``int (u - v_F)`` is then a quadrature across the frozen lines, not exact). If the new
    c has a larger loss than ``previous_loss`` (J with the previous c at these W, b), or the
    solver fails on every rung, the previous c is kept and the solve is marked rejected (infinite
    loss without ``previous_loss``).
    """
    problem = ctx.problem
    error = ""
    for rung in range(DEFLATION_RUNGS):
        solved = independent_neurons(problem, network, live, "A", rung=rung)
        index = np.flatnonzero(solved)
        frozen = live & ~solved & (network.c != 0)
        if problem.domain.dim == 1:
            reference, c0_ref = live & (network.c != 0), network.c0
        else:
            reference, c0_ref = frozen, None
        ref = replace(network.subset(np.flatnonzero(reference)), c0=c0_ref)
        sub = replace(problem, network=network.subset(index),
                      target=residual_target(problem, ref))
        try:
            dc, dc0, l2, berr, stats, seconds = on_ranks(
                ctx.comm, index.size, lambda comm, sub=sub, ref=ref: _correction(ctx, sub, ref,
                                                                                 comm))
        except SolverError as exc:
            error = str(exc)
            continue
        c = np.where(reference, network.c, 0.0)
        c[index] += dc
        c0 = None if dc0 is None else dc0 + (c0_ref or 0.0)
        result = replace(network, c=c, c0=c0)
        if problem.domain.dim > 1:
            # fit's 2D error formula clips a negative value to 0 (a garbage c from a singular A
            # would pass for a perfect fit) and would integrate u - v_ref across its kinks.
            l2 = evaluate_loss(ctx, result)[1]
        loss = 0.5 * l2 * l2
        deflated = int(np.count_nonzero(live & ~solved))
        if previous_loss is None or loss <= previous_loss:
            return OutputSolve(result, loss, l2, berr, deflated, False, seconds, rung, stats)
        break
    fallback = np.inf if previous_loss is None else previous_loss
    return OutputSolve(network, fallback, float(np.sqrt(2 * fallback)), np.nan,
                       int(np.count_nonzero(live & ~solved)), True, 0.0, rung,
                       {"error": error} if error else {})


def _correction(ctx: Context, sub: Problem, ref: Network, comm: MPI.Comm
                ) -> tuple[np.ndarray, float | None, float, float, dict, float]:
    """``fit.solve_output_weights`` for ``sub`` (target ``u - v_ref``) on ``comm``: the
    correction of c in the user order of ``sub``, c0, the L2 error, backward error, solver
    statistics and seconds. Collective over ``comm``."""
    problem = ctx.problem
    network = sub.network
    tree = build_tree(neuron_order(problem.domain, network.W, network.b, ctx.solver.ordering),
                      comm.size, ctx.solver.leaf_size)
    if problem.domain.dim == 1:
        blocks = assemble_block_rows(sub, tree, comm.rank, ("A",))
    else:
        blocks = assemble_block_rows(replace(sub, target=problem.target), tree, comm.rank, ("A",))
        if ref.n:
            rows = np.arange(blocks.start, blocks.stop)
            blocks = replace(blocks, moments=blocks.moments - network_moments(
                problem, Network(blocks.W, blocks.b), rows, ref))
    operator = operator_from_block_rows(blocks, "A", comm, problem.domain)
    start = time.perf_counter()
    out = solve_output_weights(sub, blocks, operator, ctx.solver)
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    c = np.empty(network.n)
    c[tree.perm] = out.c
    return c, out.c0, out.l2_error, out.backward_error, out.stats, seconds


# ---------------------------------------------------------------------------------------------
# The Gauss-Newton direction


@dataclass(frozen=True)
class Direction:
    """A Gauss-Newton direction in r.

    Attributes
    ----------
    p : ndarray, shape (n, d+1)
        The direction (zero rows for neurons not moved).
    moved : ndarray of bool, shape (n,)
        The neurons in the solve with G.
    excluded : int
        Live neurons set aside (``c_i ~ 0``, coincident, dependent).
    rung : int
        The deflation rung the solve succeeded on.
    seconds : float
        Wall time of the factorization and solve with G.
    """

    p: np.ndarray
    moved: np.ndarray
    excluded: int
    rung: int
    seconds: float


def gn_direction(ctx: Context, network: Network, live: np.ndarray, grad: Gradient,
                 drop_tol: float, first_rung: int = 0) -> Direction:
    """``p = -D^{-1} G^{-1} gtilde`` over the neurons that keep D G D nonsingular. Collective.

    ``y = -G^{-1} gtilde`` is the Gauss-Newton step in ``a_i = c_i r_i`` (v is linear in each
    ``a_i`` while the activation patterns stay), and ``p_i = y_i / c_i``. When G breaks down, the
    next rung of ``DEFLATION_RUNGS`` (from ``first_rung``) sets more coincident neurons aside.
    If it breaks down on every rung, the last rung is solved with the hss solver, whose
    factorization shifts the blocks that are not numerically positive definite (reported as rung
    ``DEFLATION_RUNGS`` and a warning); SolverError if that solver was the configured one.
    """
    problem = ctx.problem
    c = network.c
    big = np.abs(c) > drop_tol * np.max(np.abs(c[live]), initial=0.0)
    priority = np.linalg.norm(grad.r, axis=1)
    for rung in range(first_rung, DEFLATION_RUNGS):
        moved = independent_neurons(problem, network, live & big, "G", priority, rung)
        index = np.flatnonzero(moved)
        y = np.zeros((network.n, network.dim + 1))
        seconds = 0.0
        if index.size:
            sub = replace(problem, network=network.subset(index))

            def solve(solver: SolverConfig, sub: Problem = sub, index: np.ndarray = index
                      ) -> tuple[np.ndarray, float]:
                return on_ranks(ctx.comm, index.size, lambda comm: _layer_solve(
                    ctx, sub, grad.moments[index], comm, solver))

            try:
                y[index], seconds = solve(ctx.solver)
            except SolverError as exc:
                if rung + 1 < DEFLATION_RUNGS:
                    continue
                if ctx.solver.kind == "hss":
                    raise
                log.warning(f"sggn: the solve with G failed on every deflation rung ({exc}); "
                            "solved with the hss solver (shifted where not positive definite)")
                y[index], seconds = solve(replace(ctx.solver, kind="hss"))
                rung = DEFLATION_RUNGS
        p = np.where(moved[:, None], y / np.where(moved, c, 1.0)[:, None], 0.0)
        return Direction(p, moved, int(np.count_nonzero(live & ~moved)), rung, seconds)
    raise AssertionError("unreachable")


def _layer_solve(ctx: Context, sub: Problem, moments: np.ndarray, comm: MPI.Comm,
                 solver: SolverConfig) -> tuple[np.ndarray, float]:
    """``y = -G^{-1} gtilde`` for the neurons of ``sub`` (their moments in ``sub``'s order) with
    ``solver``, and the seconds of the factorization and solve. Collective over ``comm``."""
    problem, network = ctx.problem, sub.network
    k = network.dim + 1
    tree = build_tree(neuron_order(problem.domain, network.W, network.b, ctx.solver.ordering),
                      comm.size, ctx.solver.leaf_size)
    blocks = assemble_block_rows(sub, tree, comm.rank, ("G",))
    operator = operator_from_block_rows(blocks, "G", comm, problem.domain)
    local = tree.perm[blocks.start:blocks.stop]
    start = time.perf_counter()
    y = factor(operator, solver).solve(-moments[local].ravel())
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    out = np.empty((network.n, k))
    out[tree.perm] = operator.gather(y).reshape(-1, k)
    return out, seconds


# ---------------------------------------------------------------------------------------------
# The line search (rank-local given a collective phi)


def line_minimum(phi: Callable[[float], float], phi0: float, tiny: float,
                 slope: Callable[[float], tuple[float, float]] | None = None,
                 slope0: float = -np.inf) -> tuple[float, float, int]:
    """Minimise ``phi`` along ``gamma > 0`` from ``phi(0) = phi0``; ``slope(gamma)`` returns
    ``(phi(gamma), phi'(gamma))`` (one evaluation of both where that is cheaper).

    Bracketing starts at ``gamma = 1`` and expands by the golden ratio while phi decreases, or
    backtracks until phi drops below ``phi0``: to the minimiser of the quadratic through
    ``phi0``, ``slope0`` and ``phi(b)``, kept within ``[b / 10, b / golden]``. The search gives up
    below ``tiny``, or where the decrease the slope predicts, ``|slope0| gamma``, is under the
    rounding level ``4 eps |phi0|`` of phi. The bracket ``a < b < c`` (``phi(b)`` below both ends)
    is then refined: with the derivative ``slope`` (``slope0`` at 0), when it changes sign on
    ``[a, c]``: b itself if the sign changes within ``KINK_RTOL b`` of it (a kink), else Brent's
    root finder on it to the relative accuracy ``ROOT_RTOL`` on that side of b; otherwise (or if
    that root is worse than b) by Brent's minimiser on phi to ``sqrt(eps)``, the accuracy function
    values allow.

    Returns
    -------
    gamma, value : float
        The step and ``phi(gamma)``; ``(0, phi0)`` when no step decreases phi.
    evaluations : int
        Number of evaluations of phi and slope (an evaluation of both counts once).
    """
    values: dict[float, float] = {0.0: phi0}
    slopes: dict[float, float] = {0.0: slope0}

    def f(gamma: float) -> float:
        gamma = float(gamma)
        if gamma not in values:
            value = phi(gamma)
            values[gamma] = value if np.isfinite(value) else np.inf
        return values[gamma]

    def df(gamma: float) -> float:
        gamma = float(gamma)
        if gamma not in slopes:
            value, slopes[gamma] = slope(gamma)
            values.setdefault(gamma, value if np.isfinite(value) else np.inf)
        return slopes[gamma]

    a, b = 0.0, 1.0
    if f(b) < phi0:
        c = b + GOLDEN * (b - a)
        while f(c) < f(b) and c < 1 / tiny:
            a, b, c = b, c, c + GOLDEN * (c - b)
    else:
        floor = max(tiny, 4 * EPS * abs(phi0) / abs(slope0) if slope0 < 0 else 0.0)
        while f(b) >= phi0 and b > floor:
            c = b
            curvature = (f(b) - phi0 - slope0 * b) / (b * b)
            trial = -0.5 * slope0 / curvature if np.isfinite(curvature) and curvature > 0 else 0.0
            b = float(np.clip(trial, 0.1 * b, b / GOLDEN))
        if f(b) >= phi0:
            return 0.0, phi0, len(values) - 1
    root = None
    if f(c) > f(b) and slope is not None and df(a) < 0 < df(c):
        # The slope changes sign next to b, or b sits on a kink of phi where it jumps from < 0 to
        # > 0 (e.g. a breakpoint landing on a jump of u, where Gauss-Newton steps often end): b
        # is then the minimiser to KINK_RTOL, which the root finder would close in on bit by bit.
        side = 1.0 if df(b) < 0 else -1.0
        near = b * (1.0 + side * KINK_RTOL)
        if df(b) == 0 or side * df(near) > 0:
            root = b
        else:
            root = scipy.optimize.brentq(df, *((near, c) if side > 0 else (a, near)),
                                         rtol=ROOT_RTOL)
        if not f(root) <= f(b):
            root = None
    if root is None and f(c) > f(b):
        scipy.optimize.minimize_scalar(f, bracket=(a, b, c), method="brent",
                                       options={"xtol": EPS**0.5})
    gamma = root if root is not None else min(values, key=lambda g: (values[g], -g))
    return gamma, values[gamma], len(values.keys() | slopes.keys()) - 1


# ---------------------------------------------------------------------------------------------
# One SgGN iteration


@dataclass(frozen=True)
class State:
    """An SgGN iterate: network (user order, c solved for its W, b) and the removal record."""

    network: Network
    removed: np.ndarray
    loss: float
    l2_error: float


def start(ctx: Context, network: Network) -> tuple[State, OutputSolve | None]:
    """The iterate a run starts from: normalised, dead neurons removed, c (and c0) solved for.

    A network that comes with c (a restart, or a network file with c) keeps it, so that a restart
    continues exactly where the saved run stopped; otherwise c is solved for (the second value,
    None when c was given). Collective.
    """
    network = normalise(network)
    removed = dead_neurons(ctx.problem, network)
    if network.c is not None:
        network = replace(network, c=np.where(removed, 0.0, network.c))
        if ctx.problem.output_bias and network.c0 is None:
            network = replace(network, c0=0.0)
        return State(network, removed, *evaluate_loss(ctx, network)), None
    network = replace(network, c=np.zeros(network.n), c0=0.0 if ctx.problem.output_bias else None)
    out = solve_output(ctx, network, ~removed)
    if not np.isfinite(out.loss):
        raise SolverError(f"the c-solve failed at the initial network: {out.stats.get('error')}")
    return State(out.network, removed, out.loss, out.l2_error), out


def iterate(ctx: Context, state: State, variant: str, drop_tol: float
            ) -> tuple[State | None, dict]:
    """One SgGN iteration: gradient, GN direction, line search, c-solve. Collective.

    A direction along which no step decreases the loss (its solve with a nearly singular G was
    not accurate enough) is recomputed on the next deflation rung. Returns the new state (None
    when no rung gives a decrease) and the iteration's statistics.
    """
    live = ~state.removed
    grad = loss_and_gradient(ctx, state.network, live)
    first_rung, seconds = 0, 0.0
    while True:
        direction = gn_direction(ctx, state.network, live, grad, drop_tol, first_rung)
        gamma, value, evaluations, trial = _line_search(ctx, state, grad, direction, variant)
        seconds += direction.seconds
        stats = {"grad_norm": grad.norm(linear=False), "moved": int(direction.moved.sum()),
                 "excluded": direction.excluded, "live": int(live.sum()), "step": gamma,
                 "evaluations": evaluations["count"], "gn_rung": direction.rung}
        if gamma > 0.0 or direction.rung + 1 >= DEFLATION_RUNGS:
            break
        first_rung = direction.rung + 1
    if gamma == 0.0:
        return None, {**stats, "solver_seconds": seconds + evaluations["solver_seconds"]}
    network, removed, out = trial
    if variant == "alternating":
        out = solve_output(ctx, network, ~removed, value)
        seconds += out.seconds
    stats.update(removed=int(removed.sum()), deflated=out.deflated, rejected=int(out.rejected),
                 c_rung=out.rung, backward_error=out.backward_error,
                 solver_seconds=seconds + evaluations["solver_seconds"])
    return State(out.network, removed, out.loss, out.l2_error), stats


def _line_search(ctx: Context, state: State, grad: Gradient, direction: Direction, variant: str
                 ) -> tuple[float, float, dict, tuple[Network, np.ndarray, OutputSolve | None]]:
    """Minimise the variant's loss along ``direction``. Collective.

    Returns the step, the loss there, the evaluations (``count``, and ``solver_seconds`` of the
    trial c-solves) and the trial at the step: renormalised network, removed mask and (varpro)
    its c-solve.
    """
    network = state.network
    r, p = network.r, direction.p
    scale = max(float(np.max(np.abs(r[direction.moved]), initial=1.0)), 1.0)
    tiny = EPS * scale / max(float(np.max(np.abs(p))), np.finfo(float).tiny)
    solves: dict[float, OutputSolve] = {}

    def moved_network(gamma: float) -> tuple[Network, np.ndarray]:
        trial = normalise(network.with_r(r + gamma * p))
        removed = state.removed | dead_neurons(ctx.problem, trial)
        return replace(trial, c=np.where(removed, 0.0, trial.c)), removed

    def phi(gamma: float) -> float:
        trial, removed = moved_network(gamma)
        if variant == "alternating":
            return evaluate_loss(ctx, trial)[0]
        solves[gamma] = solve_output(ctx, trial, ~removed)
        return solves[gamma].loss

    def slope(gamma: float) -> tuple[float, float]:
        # d/dgamma of J along r + gamma p: the r-gradient at the (renormalised) trial network,
        # divided by the renormalisation scale of each neuron (J is invariant under it). The
        # gradient's loss is phi itself in the alternating variant.
        trial, removed = moved_network(gamma)
        if variant == "varpro":
            value = solves[gamma].loss if gamma in solves else phi(gamma)
            if not np.isfinite(value):
                return value, np.nan
            trial = solves[gamma].network
        norm = np.linalg.norm(network.W + gamma * p[:, :-1], axis=1)
        gradient = loss_and_gradient(ctx, trial, ~removed)
        if variant == "alternating":
            value = gradient.loss
        return value, float(np.sum(np.einsum("ij,ij->i", gradient.r, p)
                                   / np.where(norm > 0, norm, 1.0)))

    # Alternating: phi(0) by phi itself, as the c-solve's loss differs from it in the last digits
    # and a direction must be judged against the function it is searched along. Varpro: phi is
    # the c-solve's loss, so the state's loss (phi at the previous step) is phi(0).
    phi0 = phi(0.0) if variant == "alternating" else state.loss
    gamma, value, count = line_minimum(phi, phi0, tiny, slope, float(np.sum(grad.r * p)))
    count += variant == "alternating"
    counts = {"count": count, "solver_seconds": sum(out.seconds for out in solves.values())}
    return gamma, value, counts, (*moved_network(gamma), solves.get(gamma))


def run(ctx: Context, state: State, cfg: TrainConfig,
        record: Callable[[Network, np.ndarray, dict], str | None]) -> str:
    """Iterate from ``state`` until ``record`` (training.Recorder) or the line search stops.

    Returns the stop reason. Collective.
    """
    while True:
        try:
            new, stats = iterate(ctx, state, cfg.variant, cfg.drop_tol)
        except SolverError as exc:
            log.warning(f"sggn: the solve with G failed on every deflation rung ({exc})")
            return "gn_solve_failed"
        if new is None:
            return "line_search" if stats["moved"] else "no_movable_neurons"
        state = new
        reason = record(state.network, state.removed,
                        {**stats, "loss": state.loss, "l2_error": state.l2_error,
                         "active": stats["moved"]})
        if reason is not None:
            return reason
