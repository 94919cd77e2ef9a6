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
(docs/math.md, "Gauss-Newton step in r"), so the direction is ``p = -D^{-1} G^{-1} gtilde``,
``gtilde_i = int (v - u) h_i xhat``: one solve with G over the moving neurons (``solvers.factor``,
the configured back end), then a scaling by ``1/c_i``. ``y = -G^{-1} gtilde`` is the Gauss-Newton
step in ``a_i = c_i r_i``, which is also Kaufman's variable-projection step (the joint step in (c,
r) at ``c = c*(r)``; ``c_i phi_i = c_i h_i xhat . r_i`` lies in the span of the r-Jacobian). The
path is ``r + gamma p`` (linear in ``a_i`` while c is fixed), renormalised; in 1D a breakpoint goes
through infinity and the neuron changes orientation when ``w_i + gamma p_w,i`` changes sign. The
variants differ in what the line search minimises:

- ``"alternating"``: ``J(c, r + gamma p)`` with c fixed, then c is solved for at the new r;
- ``"varpro"``: the projected loss ``min_c J(c, r + gamma p)``; every trial point is a c-solve.

The step length is the minimiser along the path (distgn.training.linesearch). The loss at the
start of the search is evaluated by the same function as the trial points (alternating variant),
so that rounding differences between the c-solve's loss and J cannot reject a descent direction.
Each slope evaluation also yields J there. When no step decreases the loss, the direction is
recomputed on the next deflation rung (distgn.training.deflation) before the iteration gives up.

Neurons set aside from the c-solve ("deflated") keep their previous coefficient in 1D, where the
solve is a correction to the previous fit, and get ``c_i = 0`` in 2D and up, where the others span
them to working precision (``solve_output``). A c-solve that comes out worse than the previous c
at the same W, b (possible when A is singular to working precision) is rejected and the previous
c kept, so the loss never increases; deflations, rejections and rungs are counted in the history.
This keeps the c-solve correct when neurons coalesce around a jump (coefficients ~ 1/delta).

Reseating (``[train] reseat``): after an iteration that lowered the loss by less than
``RESEAT_STALL``, the wasted neurons (dead, dependent on the others, or left out of the step for
their small ``|c_i|``) are moved to where the fit is worst (distgn.training.reseat) and c is
solved for; the move is kept only if the loss falls (``reseat``).

Staged growth (``[train] grow_from``): the run goes through networks of growing size; each
converged stage is grown (distgn.training.growth, ``grown``) into the start of the next
(``run``).

Functions taking a ``Context`` are collective over ``ctx.comm`` (every rank holds the whole
network; distgn.training.objective makes the ranks agree bit for bit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from mpi4py import MPI

from distgn.config import SolverConfig, TrainConfig
from distgn.errors import SolverError
from distgn.fit import solve_output_weights
from distgn.network import Network
from distgn.operator import Operator, build, shifted
from distgn.parallel import log
from distgn.problem import Problem
from distgn.solvers import factor
from distgn.targets import Target
from distgn.training import growth
from distgn.training.deflation import (
    DEFLATION_RUNGS,
    dead_neurons,
    independent_neurons,
    normalise,
)
from distgn.training.linesearch import MAX_EVALUATIONS, line_search
from distgn.training.objective import (
    Context,
    Gradient,
    evaluate_loss,
    loss_and_gradient,
    network_moments,
)
from distgn.training.reseat import hop_neuron, moved, reseated, wasted_neurons

VARIANTS = ("alternating", "varpro")


# ---------------------------------------------------------------------------------------------
# The c-solve


@dataclass(frozen=True)
class OutputSolve:
    """Result of the c-solve at fixed (W, b).

    Attributes
    ----------
    network : Network
        The network with the new c (and c0); deflated neurons keep their previous ``c_i`` in 1D
        and have ``c_i = 0`` in 2D and up.
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
    gradient : Gradient or None
        ``loss_and_gradient`` at the result, when asked for (its loss is ``loss``).
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
    gradient: Gradient | None = None


def residual_target(problem: Problem, reference: Network) -> Target:
    """``u - v_ref`` as a target: u's declared features plus, in 1D, the breakpoints of the
    reference network (so that the 1D Gauss rules stay exact on it)."""
    u = problem.target
    if reference.n == 0 and not reference.c0:
        return u
    points = u.points
    if problem.domain.dim == 1:
        points = points + tuple(reference.breakpoints()[reference.c != 0])
    return replace(
        u,
        name=f"{u.name} minus the reference fit",
        points=points,
        func=lambda x: u(x) - reference.evaluate(x),
        constant=False,
    )


def solve_output(
    ctx: Context,
    network: Network,
    live: np.ndarray,
    previous_loss: float | None = None,
    gradient: bool = False,
) -> OutputSolve:
    """Least-squares c (and c0) for the live neurons of ``network``, with deflation. Collective.

    ``network.c`` is the previous c. ``independent_neurons(..., "A")`` sets aside the neurons
    that make A singular to working precision; when the solver breaks down, the next rung of
    ``DEFLATION_RUNGS`` sets more aside. In 1D the solve is a correction to the whole previous
    fit (iterative refinement: it fits ``u - v_ref``, whose right-hand side ``int (u - v_ref)
    phi_i`` comes from exact Gauss rules with no cancellation, so large coefficients of
    coalescing neurons cost no accuracy), and the neurons set aside keep their c. In 2D and up the
    solve fits u itself and the neurons set aside get ``c_i = 0``: the others span their functions
    to working precision, and a kept coefficient (often large and cancelling, from before the
    neuron coalesced) would stay in the fit for good (docs/sggn.md, section 2d). When the
    solver fails on every rung, the last rung is solved with the hss solver, whose factorization
    shifts the blocks that are not numerically positive definite (rung ``DEFLATION_RUNGS``, a
    warning); the solve fails only if that fails too (or hss was the configured solver). If the new
    c has a larger loss than ``previous_loss`` (J with the previous c at these W, b), or the
    solver fails on every rung, the previous c is kept and the solve is marked rejected (infinite
    loss without ``previous_loss``). The loss is ``evaluate_loss`` (the function the line search
    minimises), or with ``gradient`` ``loss_and_gradient`` over the live neurons, kept in the
    result for the next iteration.
    """
    problem = ctx.problem
    error = ""
    attempts = [(rung, ctx) for rung in range(DEFLATION_RUNGS)]
    if ctx.solver.kind != "hss":
        attempts.append((DEFLATION_RUNGS, replace(ctx, solver=replace(ctx.solver, kind="hss"))))
    for rung, attempt in attempts:
        if rung == DEFLATION_RUNGS:
            log.warning(
                f"sggn: the c-solve failed on every deflation rung ({error}); solving "
                "with the hss solver (shifted where not positive definite)"
            )
        solved = independent_neurons(
            problem, network, live, "A", rung=min(rung, DEFLATION_RUNGS - 1)
        )
        index = np.flatnonzero(solved)
        if problem.domain.dim == 1:
            reference, c0_ref = live & (network.c != 0), network.c0
        else:
            reference, c0_ref = np.zeros_like(live), None
        ref = replace(network.subset(np.flatnonzero(reference)), c0=c0_ref)
        sub = replace(problem, network=network.subset(index), target=residual_target(problem, ref))
        try:
            dc, dc0, berr, stats, seconds = ctx.solve(
                index.size,
                lambda comm, sub=sub, ref=ref, attempt=attempt: _correction(
                    attempt, sub, ref, comm
                ),
            )
        except SolverError as exc:
            error = str(exc)
            continue
        error = ""  # solved: a rejection below is no failure
        c = np.where(reference, network.c, 0.0)
        c[index] += dc
        c0 = None if dc0 is None else dc0 + (c0_ref or 0.0)
        result = replace(network, c=c, c0=c0)
        # Measured as the line search measures it (fit's formulas differ in the last digits).
        grad = loss_and_gradient(ctx, result, live) if gradient else None
        loss, l2 = (grad.loss, grad.l2_error) if grad else evaluate_loss(ctx, result)
        deflated = int(np.count_nonzero(live & ~solved))
        if previous_loss is None or loss <= previous_loss:
            return OutputSolve(result, loss, l2, berr, deflated, False, seconds, rung, stats, grad)
        break
    fallback = np.inf if previous_loss is None else previous_loss
    grad = loss_and_gradient(ctx, network, live) if gradient else None
    return OutputSolve(
        network,
        fallback,
        float(np.sqrt(2 * fallback)),
        np.nan,
        int(np.count_nonzero(live & ~solved)),
        True,
        0.0,
        rung,
        {"error": error} if error else {},
        grad,
    )


def _correction(
    ctx: Context, sub: Problem, ref: Network, comm: MPI.Comm
) -> tuple[np.ndarray, float | None, float, dict, float]:
    """``fit.solve_output_weights`` for ``sub`` (target ``u - v_ref``) on ``comm``: the
    correction of c in the user order of ``sub``, c0, backward error, solver statistics and
    seconds. Collective over ``comm``."""
    problem = ctx.problem
    network = sub.network
    source = sub if problem.domain.dim == 1 else replace(sub, target=problem.target)
    operator, blocks = build(source, ctx.solver, comm, "A")
    tree = blocks.tree
    if problem.domain.dim > 1 and ref.n:
        rows = np.arange(blocks.start, blocks.stop)
        blocks = replace(
            blocks,
            moments=blocks.moments
            - network_moments(problem, Network(blocks.W, blocks.b), rows, ref),
        )
    start = time.perf_counter()
    out = solve_output_weights(sub, blocks, operator, ctx.solver)
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    c = np.empty(network.n)
    c[tree.perm] = operator.gather(out.c)
    return c, out.c0, out.backward_error, out.stats, seconds


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


def gn_direction(
    ctx: Context,
    network: Network,
    live: np.ndarray,
    grad: Gradient,
    drop_tol: float,
    first_rung: int = 0,
    damping: float = 0.0,
) -> Direction:
    """``p = -D^{-1} G^{-1} gtilde`` over the neurons that keep D G D nonsingular. Collective.

    ``y = -G^{-1} gtilde`` is the Gauss-Newton step in ``a_i = c_i r_i`` (v is linear in each
    ``a_i`` while the activation patterns stay), and ``p_i = y_i / c_i``. With ``damping``
    (lambda > 0) the step is Levenberg's, ``(D G D + mu I) p = -D gtilde``, i.e.
    ``(G + mu D^{-2}) y = -gtilde`` (``levenberg_shift``). When G breaks down, the
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

            def solve(
                solver: SolverConfig, sub: Problem = sub, index: np.ndarray = index
            ) -> tuple[np.ndarray, float]:
                return ctx.solve(
                    index.size,
                    lambda comm: _layer_solve(ctx, sub, grad.moments[index], comm, solver, damping),
                )

            try:
                y[index], seconds = solve(ctx.solver)
            except SolverError as exc:
                if rung + 1 < DEFLATION_RUNGS:
                    continue
                if ctx.solver.kind == "hss":
                    raise
                log.warning(
                    f"sggn: the solve with G failed on every deflation rung ({exc}); "
                    "solved with the hss solver (shifted where not positive definite)"
                )
                y[index], seconds = solve(replace(ctx.solver, kind="hss"))
                rung = DEFLATION_RUNGS
        p = np.where(moved[:, None], y / np.where(moved, c, 1.0)[:, None], 0.0)
        return Direction(p, moved, int(np.count_nonzero(live & ~moved)), rung, seconds)
    raise AssertionError("unreachable")


def levenberg_shift(operator: Operator, c: np.ndarray, damping: float) -> np.ndarray | None:
    """The diagonal ``mu D^{-2}`` (tree order, d+1 entries per neuron) that turns G into the
    matrix of Levenberg's step in r, with ``mu = damping * mean(c_i^2 G_kk)`` (the mean diagonal
    of ``D G D``, so that ``damping`` is relative); None without damping. Collective.

    In r the shift is ``mu I``: it bounds the move ``p_i = y_i / c_i`` of a neuron with a small
    coefficient, which the undamped step (and Marquardt's ``G + mu diag(G)``, which scales with
    D) does not.
    """
    if damping == 0.0:
        return None
    scale = np.repeat(c[operator.tree.perm] ** 2, operator.block)
    diagonal = operator.gather(operator.diagonal())
    return damping * float(np.mean(scale * diagonal)) / scale


def _layer_solve(
    ctx: Context,
    sub: Problem,
    moments: np.ndarray,
    comm: MPI.Comm,
    solver: SolverConfig,
    damping: float = 0.0,
) -> tuple[np.ndarray, float]:
    """``y = -(G + mu D^{-2})^{-1} gtilde`` (``levenberg_shift``; mu = 0 without damping) for the
    neurons of ``sub`` (their moments in ``sub``'s order) with ``solver``, and the seconds of the
    factorization and solve. Collective over ``comm``."""
    network = sub.network
    k = network.dim + 1
    operator, blocks = build(sub, ctx.solver, comm, "G")
    tree = blocks.tree
    local = tree.perm[blocks.start : blocks.stop]
    start = time.perf_counter()
    shift = levenberg_shift(operator, network.c, damping)
    with shifted(operator, shift) as damped, factor(damped, solver) as factorization:
        y = factorization.solve(-moments[local].ravel())
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    out = np.empty((network.n, k))
    out[tree.perm] = operator.gather(y).reshape(-1, k)
    return out, seconds


# ---------------------------------------------------------------------------------------------
# One SgGN iteration


@dataclass(frozen=True)
class State:
    """An SgGN iterate: network (user order, c solved for its W, b), the removal record and the
    Levenberg parameter of the next step (``next_damping``)."""

    network: Network
    removed: np.ndarray
    loss: float
    l2_error: float
    damping: float = 0.0


# The Levenberg parameter: divided by DAMPING_FACTOR after a full step (gamma >= 1, down to
# DAMPING_MIN), multiplied by it (and raised to at least DAMPING_RESTART) after a step cut below
# gamma = 1/2 (docs/sggn.md, section 2).
DAMPING_FACTOR = 4.0
DAMPING_MIN = 1e-12
DAMPING_RESTART = 1e-4


def initial_damping(ctx: Context, cfg: TrainConfig) -> float:
    """``train.damping`` in 1D; the step in 2D and up is undamped (docs/sggn.md, section 2)."""
    return cfg.damping if ctx.dim == 1 else 0.0


def next_damping(damping: float, step: float) -> float:
    """The Levenberg parameter after an accepted step ``gamma`` (0 stays 0)."""
    if damping == 0.0:
        return 0.0
    if step >= 1.0:
        return max(damping / DAMPING_FACTOR, DAMPING_MIN)
    if step < 0.5:
        return max(damping * DAMPING_FACTOR, DAMPING_RESTART)
    return damping


def start(ctx: Context, network: Network, damping: float = 0.0) -> tuple[State, OutputSolve | None]:
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
        return State(network, removed, *evaluate_loss(ctx, network), damping), None
    network = replace(network, c=np.zeros(network.n), c0=0.0 if ctx.problem.output_bias else None)
    out = solve_output(ctx, network, ~removed)
    if not np.isfinite(out.loss):
        raise SolverError(f"the c-solve failed at the initial network: {out.stats.get('error')}")
    return State(out.network, removed, out.loss, out.l2_error, damping), out


def iterate(
    ctx: Context, state: State, variant: str, drop_tol: float, grad: Gradient | None = None
) -> tuple[State | None, dict, Gradient | None]:
    """One SgGN iteration: gradient, GN direction, line search, c-solve. Collective.

    ``grad`` is ``loss_and_gradient`` at ``state`` over its live neurons when already known (the
    previous iteration's c-solve computes it). A direction along which no step decreases the loss
    (its solve with a nearly singular G was not accurate enough) is recomputed on the next
    deflation rung; when no rung gives a decrease, the gradient direction is searched
    (``gradient_step`` in the statistics). ``parameter_change`` is the largest change of a live
    neuron's (w, b) relative to ``1 + max |r|``. Returns the new state (None when that fails
    too), the iteration's statistics (``model_decrease``: ``-phi'(0)`` of the last direction,
    relative to the loss) and the gradient at the new state.
    """
    live = ~state.removed
    if grad is None:
        grad = loss_and_gradient(ctx, state.network, live)
    first_rung, seconds = 0, 0.0
    while True:
        direction = gn_direction(
            ctx, state.network, live, grad, drop_tol, first_rung, state.damping
        )
        slope0 = float(np.sum(grad.r * direction.p))
        gamma, value, evaluations, trial = _line_search(ctx, state, direction, variant, slope0)
        seconds += direction.seconds
        stats = {
            "grad_norm": grad.norm(linear=False),
            "moved": int(direction.moved.sum()),
            "excluded": direction.excluded,
            "live": int(live.sum()),
            "step": gamma,
            "evaluations": evaluations["count"],
            "gn_rung": direction.rung,
            "model_decrease": -slope0 / state.loss if state.loss > 0 else 0.0,
            "damping": state.damping,
        }
        if gamma > 0.0 or direction.rung + 1 >= DEFLATION_RUNGS:
            break
        first_rung = direction.rung + 1
    if gamma == 0.0 and state.loss > 0:
        # No Gauss-Newton step decreases the loss (the iterate sits on a kink of J, or G is too
        # ill-conditioned): the gradient direction, scaled so that gamma = 1 is the linear
        # extrapolation of J to 0, decides between a step and convergence.
        steepest = replace(
            direction, p=-grad.r * state.loss / max(grad.norm(False) ** 2, np.finfo(float).tiny)
        )
        gamma, value, fallback, trial = _line_search(ctx, state, steepest, variant, -state.loss)
        evaluations = {key: evaluations[key] + fallback[key] for key in evaluations}
        stats.update(step=gamma, evaluations=evaluations["count"], gradient_step=1)
    if gamma == 0.0:
        return None, {**stats, "solver_seconds": seconds + evaluations["solver_seconds"]}, grad
    network, removed, out = trial
    if variant == "alternating":
        out = solve_output(ctx, network, ~removed, value, gradient=True)
        seconds += out.seconds
    if out.rejected and out.stats.get("error"):
        log.warning(f"sggn: the c-solve failed ({out.stats['error']}); kept the previous c")
    moved = ~removed & ~state.removed
    change = np.abs(out.network.r[moved] - state.network.r[moved])
    stats.update(
        parameter_change=float(np.max(change, initial=0.0))
        / (1.0 + float(np.max(np.abs(state.network.r[moved]), initial=0.0)))
    )
    stats.update(
        removed=int(removed.sum()),
        deflated=out.deflated,
        rejected=int(out.rejected),
        c_solve_failed=int(bool(out.stats.get("error"))),
        c_rung=out.rung,
        backward_error=out.backward_error,
        solver_seconds=seconds + evaluations["solver_seconds"],
    )
    damping = next_damping(state.damping, stats["step"])
    return State(out.network, removed, out.loss, out.l2_error, damping), stats, out.gradient


def _line_search(
    ctx: Context, state: State, direction: Direction, variant: str, slope0: float
) -> tuple[float, float, dict, tuple[Network, np.ndarray, OutputSolve | None]]:
    """Minimise the variant's loss along ``direction`` (``linesearch.line_search``). Collective.

    ``phi(0)`` is the state's loss: ``evaluate_loss`` at the state, the function the trial points
    are measured with (alternating), or the c-solve's loss there (varpro). Returns the step, the
    loss there, the evaluations (``count``, and ``solver_seconds`` of the trial c-solves) and the
    trial at the step: renormalised network, removed mask and (varpro) its c-solve.
    """
    network = state.network
    r, p = network.r, direction.p
    solves: dict[float, OutputSolve] = {}

    def moved_network(gamma: float) -> tuple[Network, np.ndarray]:
        trial = normalise(network.with_r(r + gamma * p))
        removed = state.removed | dead_neurons(ctx.problem, trial)
        return replace(trial, c=np.where(removed, 0.0, trial.c)), removed

    def phi(gamma: float) -> float:
        trial, removed = moved_network(gamma)
        if variant == "alternating":
            return evaluate_loss(ctx, trial)[0]
        solves[gamma] = solve_output(ctx, trial, ~removed, gradient=True)
        return solves[gamma].loss

    gamma, value, count = line_search(phi, state.loss, slope0)
    counts = {"count": count, "solver_seconds": sum(out.seconds for out in solves.values())}
    return gamma, value, counts, (*moved_network(gamma), solves.get(gamma))


def reseat(ctx: Context, state: State, drop_tol: float) -> tuple[State, Gradient | None, int]:
    """Move the wasted neurons (``reseat.wasted_neurons``: dead, dependent on the others, or of
    negligible c) to where the fit is worst (``reseat.reseated``) and solve for c (1D and 2D).
    Collective.

    Kept only when the c-solve's loss is below the state's; returns the new state, its gradient
    (None when nothing was moved) and the number of neurons moved.
    """
    network = state.network
    if ctx.dim > 2:
        return state, None, 0
    wasted = wasted_neurons(ctx.problem, network, state.removed, drop_tol)
    if not wasted.any():
        return state, None, 0
    trial, moved = reseated(ctx.problem, network, wasted)
    removed = state.removed & ~moved
    out = solve_output(ctx, trial, ~removed, state.loss, gradient=True)
    if out.rejected or not out.loss < state.loss:
        return state, None, 0
    moved_count = int(moved.sum())
    return (
        replace(state, network=out.network, removed=removed, loss=out.loss, l2_error=out.l2_error),
        out.gradient,
        moved_count,
    )


# Reseating is tried after an iteration that lowered the loss by less than this fraction.
RESEAT_STALL = 0.01
# Consecutive failed c-solves after which a run stops (stop reason ``c_solve_failed``).
C_SOLVE_FAILURES = 3


# Stop reasons that mean a basin is done; with ``[train] hops`` a hop follows them.
CONVERGED = ("tol", "hop_tol", "gtol", "line_search")
# A basin also ends, before the last stage of staged growth, after ``[train] stage_iter``
# iterations.
BASIN_ENDS = (*CONVERGED, "stage_iter")


@dataclass(frozen=True)
class Hops:
    """Basin hopping and growth so far: hops done, the best iterate of the stage's basins left
    (None before its first hop), the stage (index into ``TrainConfig.stage_sizes``) and the
    iterations since the last hop or growth."""

    done: int = 0
    best: State | None = None
    stage: int = 0
    basin: int = 0

    def saved(self) -> dict[str, object]:
        """The record for a checkpoint's optimizer state (``from_saved`` reads it back)."""
        if self.best is None:
            return {"hops": self.done, "stage": self.stage, "basin": self.basin}
        network = self.best.network
        return {
            "hops": self.done,
            "stage": self.stage,
            "basin": self.basin,
            "best_loss": self.best.loss,
            "best_l2_error": self.best.l2_error,
            "best_W": network.W,
            "best_b": network.b,
            "best_c": network.c,
            "best_removed": self.best.removed.astype(np.int8),
            **({} if network.c0 is None else {"best_c0": float(network.c0)}),
        }

    @classmethod
    def from_saved(cls, saved: Mapping[str, object] | None) -> Hops:
        """The record of a checkpoint's optimizer state (a fresh one when there is none)."""
        stage, basin = (int((saved or {}).get(key, 0)) for key in ("stage", "basin"))
        if not saved or "best_W" not in saved:
            return cls(int((saved or {}).get("hops", 0)), None, stage, basin)
        c0 = saved.get("best_c0")
        network = Network(
            np.asarray(saved["best_W"], dtype=float),
            np.asarray(saved["best_b"], dtype=float),
            np.asarray(saved["best_c"], dtype=float),
            None if c0 is None else float(c0),
        )
        best = State(
            network,
            np.asarray(saved["best_removed"]).astype(bool),
            float(saved["best_loss"]),
            float(saved["best_l2_error"]),
        )
        return cls(int(saved["hops"]), best, stage, basin)


def hop(ctx: Context, state: State, rank: int, damping: float) -> tuple[State, Gradient | None]:
    """A basin hop from ``state``: the neuron of the ``rank``-th smallest contribution
    (``reseat.hop_neuron``) moves to where the fit is worst (``reseat.moved``) and c is solved
    for, kept whatever its loss. Returns the new state (``state`` itself if the c-solve failed)
    and its gradient. Collective."""
    index = np.array([hop_neuron(ctx.problem, state.network, rank)])
    trial, mask = moved(ctx.problem, state.network, index)
    removed = state.removed & ~mask
    # c from scratch, as at the start of a run (in 1D not a correction to the previous fit).
    trial = replace(trial, c=np.zeros(trial.n), c0=None if trial.c0 is None else 0.0)
    out = solve_output(ctx, trial, ~removed, gradient=True)
    if not np.isfinite(out.loss):
        log.warning(f"sggn: hop {rank}: the c-solve failed ({out.stats.get('error')}); skipped")
        return state, None
    return State(out.network, removed, out.loss, out.l2_error, damping), out.gradient


def grown(
    ctx: Context, state: State, size: int, spacing: float, damping: float
) -> tuple[State, Gradient | None]:
    """The start of the next stage of staged growth: ``growth.grow`` from ``state`` to ``size``
    neurons, c solved for (the old c kept if the solve is worse). Returns the new state and its
    gradient. Collective."""
    network = growth.grow(state.network, ~state.removed, ctx.problem.domain, size, spacing)
    removed = np.zeros(network.n, dtype=bool)
    out = solve_output(ctx, network, ~removed, evaluate_loss(ctx, network)[0], gradient=True)
    if out.rejected and out.stats.get("error"):
        log.warning(f"sggn: growth to n = {size}: the c-solve failed ({out.stats['error']})")
    return State(out.network, removed, out.loss, out.l2_error, damping), out.gradient


def run(
    ctx: Context,
    state: State,
    cfg: TrainConfig,
    record: Callable[..., str | None],
    saved: Mapping[str, object] | None = None,
    sizes: list[int] | None = None,
) -> tuple[str, State]:
    """Iterate from ``state`` until ``record`` (training.Recorder) or SgGN itself stops.

    With ``cfg.reseat`` an iteration that lowered the loss by less than ``RESEAT_STALL`` is
    followed by ``reseat`` (history column ``reseated``: neurons moved). SgGN's own stop
    reasons: ``tol`` (on every deflation rung and along the gradient, the line search went down
    to steps whose predicted decrease is under the rounding level of J without a decrease: a
    numerically stationary point), ``line_search`` (it gave up after
    ``linesearch.MAX_EVALUATIONS`` evaluations instead), ``gn_solve_failed``, ``c_solve_failed``
    (``C_SOLVE_FAILURES`` consecutive failed c-solves), ``no_movable_neurons``.

    Basin hopping (``cfg.hops``): after a stop in ``CONVERGED``, hop ``k`` (k = 0, 1, ...)
    moves the neuron of the k-th smallest contribution of the best iterate so far (``hop``)
    and the iteration goes on from there; the hop is a history row (column ``hop``), which
    restarts the stopping window. ``saved`` is a checkpoint's optimizer state, from which
    the hops continue.

    Staged growth (``sizes``: ``TrainConfig.stage_sizes``, the last one the run's n): after a
    stop in ``CONVERGED`` with the hops done (the hops are spent in the first stage), or after
    ``cfg.stage_iter`` iterations in a basin of a stage before the last, the best iterate of
    the stage grows to the next size (``grown``); the growth is a history row
    (column ``grow``) that restarts the stopping window like a hop. Returns the stop reason of
    the last basin and the best iterate of all basins of the last stage. Collective.
    """
    hops = Hops.from_saved(saved)
    sizes = sizes or [state.network.n]
    grad, failures = None, 0
    while True:
        reason = None
        try:
            new, stats, grad = iterate(ctx, state, cfg.variant, cfg.drop_tol, grad)
        except SolverError as exc:
            log.warning(f"sggn: the solve with G failed on every deflation rung ({exc})")
            reason = "gn_solve_failed"
        else:
            if new is None and not stats["moved"]:
                reason = "no_movable_neurons"
            elif new is None:
                reason = "line_search" if stats["evaluations"] >= MAX_EVALUATIONS else "tol"
        if reason is None:
            failures = failures + 1 if stats["c_solve_failed"] else 0
            stalled = new.loss > (1.0 - RESEAT_STALL) * state.loss
            state = new
            stats["reseated"] = 0
            if cfg.reseat and stalled:
                state, regrad, stats["reseated"] = reseat(ctx, state, cfg.drop_tol)
                grad = regrad or grad
            hops = replace(hops, basin=hops.basin + 1)
            reason = record(
                state.network,
                state.removed,
                {**stats, "loss": state.loss, "l2_error": state.l2_error, "active": stats["moved"]},
                optimizer={"damping": state.damping, **hops.saved()},
            )
            if reason is None and failures >= C_SOLVE_FAILURES:
                log.warning(f"sggn: the c-solve failed {failures} times in a row; stopping")
                reason = "c_solve_failed"
        last_stage = hops.stage + 1 >= len(sizes)
        if reason is None and not last_stage and 0 < cfg.stage_iter <= hops.basin:
            reason = "stage_iter"
        if reason is None:
            continue
        best = state if hops.best is None or state.loss < hops.best.loss else hops.best
        if reason not in BASIN_ENDS or hops.done >= cfg.hops and last_stage:
            return reason, best
        if hops.done < cfg.hops:
            log.info(
                f"sggn: {reason} at loss {state.loss:.6e}; hop {hops.done + 1} of {cfg.hops} "
                f"from the best iterate (loss {best.loss:.6e})"
            )
            state, grad = hop(ctx, best, hops.done, initial_damping(ctx, cfg))
            hops, event = Hops(hops.done + 1, best, hops.stage), "hop"
        else:
            size = sizes[hops.stage + 1]
            log.info(
                f"sggn: {reason} at loss {state.loss:.6e}; stage {hops.stage + 2} of "
                f"{len(sizes)}: growing the best iterate (loss {best.loss:.6e}, n = "
                f"{best.network.n}) to n = {size}"
            )
            spacing = cfg.grow_spread / cfg.growth**hops.stage
            state, grad = grown(ctx, best, size, spacing, initial_damping(ctx, cfg))
            hops, event = Hops(hops.done, None, hops.stage + 1), "grow"
        reason = record(
            state.network,
            state.removed,
            {
                "loss": state.loss,
                "l2_error": state.l2_error,
                "step": 0.0,
                "active": int((~state.removed).sum()),
                event: 1,
            },
            optimizer={"damping": state.damping, **hops.saved()},
        )
        if reason is not None:
            return reason, state if event == "grow" else min(best, state, key=lambda s: s.loss)
