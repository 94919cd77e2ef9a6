"""Training runs: method dispatch, stopping, progress, history, checkpoints and restart.

``train`` fits ``problem.target`` with ``[train] method``: ``"sggn"`` (distgn.training.sggn,
variant ``"alternating"`` or ``"varpro"``) or a baseline of distgn.training.baselines (``"adam"``,
``"bfgs"``, ``"lm"``). Every method starts from the same iterate: the configured network,
normalised to ``|w_i| = 1``, dead neurons removed, and c (and c0) solved for with the configured
solver unless the network comes with c (``sggn.start``).

Stopping (the first that holds; the reason is returned as ``stop_reason``):

============== ==============================================================================
``tol``        over the last ``patience`` iterations the loss decreased by at most ``tol`` times
               the initial loss of the run (the progress left is invisible on the scale of the
               problem; or the loss is zero); SgGN also stops with ``tol`` when steps down to the
               rounding level of J give no decrease along the Gauss-Newton direction, on every
               deflation rung and along the gradient (distgn.training.sggn.run)
``gtol``       the gradient norm is at most ``gtol`` (r only for SgGN, all parameters otherwise)
``max_iter``   ``max_iter`` iterations were done in this run
``max_seconds`` the run took ``max_seconds`` of wall time
method's own   ``line_search`` (SgGN: the line search gave up before reaching that rounding
               level), ``gn_solve_failed`` (G breaks down with every deflation and with the
               shifted hss fallback), ``c_solve_failed`` (the c-solve failed on every deflation
               rung in 3 consecutive iterations; each failure is a warning with its reason),
               ``no_movable_neurons``, and the baselines' reasons (distgn.training.baselines)
============== ==============================================================================

A run that stops because a linear solver failed (``gn_solve_failed``, ``c_solve_failed``,
``solver_failed``) writes its run file and then raises SolverError: ``distgn train`` exits with
status 2 (README, "Exit status").

The result records ``seconds_to``: for each decade ``1e-k`` of the relative L2 error reached, the
run's seconds at the first iterate at or below it (from the history, so restarts keep them).

Every iteration is appended to the history (``iteration, loss, l2_error, relative_l2_error, step,
active, seconds, solver_seconds, grad_norm`` and the method's own counters) and logged on rank 0
every ``log_every`` iterations. The run file ``output.path`` (distgn.io) is written every
``checkpoint_every`` iterations and at the end: the network in the user's neuron order with the
removed neurons recorded, the history and the result. A restart continues the history (iteration
numbers and seconds go on from the saved ones; ``max_iter`` counts this run's iterations).
``train`` is collective; the result is the same on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from distgn.config import Config, to_dict
from distgn.errors import InputError, SolverError
from distgn.io import save_state
from distgn.network import Network
from distgn.parallel import log
from distgn.problem import Problem
from distgn.training import baselines, sggn
from distgn.training.objective import Context

METHODS = ("sggn", "adam", "bfgs", "lm")
# Stop reasons of a failed linear solver: the run file is written, then SolverError (exit 2).
SOLVER_FAILURES = ("gn_solve_failed", "c_solve_failed", "solver_failed")


class Recorder:
    """Per-iteration bookkeeping shared by all methods: history, log, stopping, checkpoints.

    Calling it with the new iterate returns a stop reason or None. Collective (every rank calls
    it with the same values; rank 0's clock decides ``max_seconds``).
    """

    def __init__(self, ctx: Context, config: Config, history: dict[str, list],
                 result: dict) -> None:
        self.ctx, self.config, self.cfg = ctx, config, config.train
        self.history = history
        self.result = result
        self.base = int(history["iteration"][-1]) if history.get("iteration") else 0
        self.offset = float(history["seconds"][-1]) if history.get("seconds") else 0.0
        self.iterations = 0
        self.clock = time.perf_counter()
        self.losses: list[float] = []
        self.initial_loss = float(history["loss"][0]) if history.get("loss") else math.nan
        self.network: Network | None = None
        self.removed: np.ndarray | None = None
        self.u_norm = math.sqrt(max(ctx.target_norms[1], 0.0))

    def elapsed(self) -> float:
        """Seconds since the run started (rank 0's clock, broadcast). Collective."""
        return float(self.ctx.comm.bcast(time.perf_counter() - self.clock, root=0))

    def __call__(self, network: Network, removed: np.ndarray, stats: Mapping[str, float],
                 initial: bool = False) -> str | None:
        """Record an iterate (``initial``: the starting one) and decide whether to stop."""
        self.network, self.removed = network, removed
        loss = float(stats["loss"])
        elapsed = self.elapsed()
        if initial and not self.history.get("iteration"):
            self.initial_loss = loss
        if initial and self.history.get("iteration"):
            self.losses = [float(v) for v in self.history["loss"][-self.cfg.patience - 1:]]
            return None
        self.iterations += 0 if initial else 1
        row = {"iteration": self.base + self.iterations, "seconds": self.offset + elapsed,
               "relative_l2_error": stats["l2_error"] / self.u_norm if self.u_norm else math.nan,
               **stats}
        _append(self.history, row)
        self._log(row, elapsed, initial)
        self.losses = (self.losses + [loss])[-self.cfg.patience - 1:]
        reason = None if initial else self._stop(loss, float(stats.get("grad_norm", math.nan)),
                                                 elapsed)
        every = self.cfg.checkpoint_every
        if reason is None and not initial and every > 0 and self.iterations % every == 0:
            self.save({"stop_reason": "running"})
        return reason

    def _stop(self, loss: float, grad_norm: float, elapsed: float) -> str | None:
        """The stop reason after an iteration (module docstring), or None."""
        window = self.losses[0]
        full = len(self.losses) > self.cfg.patience
        if loss == 0.0 or full and 0.0 <= window - loss <= self.cfg.tol * self.initial_loss:
            return "tol"
        if grad_norm <= self.cfg.gtol:
            return "gtol"
        if self.iterations >= self.cfg.max_iter:
            return "max_iter"
        if elapsed >= self.cfg.max_seconds:
            return "max_seconds"
        return None

    def _log(self, row: Mapping[str, float], elapsed: float, initial: bool) -> None:
        if not initial and self.iterations % max(self.cfg.log_every, 1):
            return
        eta = ""
        if self.iterations > 0:
            per_iteration = elapsed / self.iterations
            remaining = min((self.cfg.max_iter - self.iterations) * per_iteration,
                            self.cfg.max_seconds - elapsed)
            eta = f"  eta {max(remaining, 0.0):.1f}s"
        log.info(
            f"{self.cfg.method} it {int(row['iteration']):5d}  loss {row['loss']:.6e}  "
            f"L2 {row['l2_error']:.3e} (rel {row['relative_l2_error']:.2e})  "
            f"step {row.get('step', math.nan):.3g}  active {int(row.get('active', 0))}  "
            f"solver {row.get('solver_seconds', 0.0):.3f}s{eta}"
        )

    def save(self, extra: Mapping[str, object]) -> dict:
        """Write the run file (network, history, result); return the result. Collective."""
        result = dict(self.result)
        last = {key: values[-1] for key, values in self.history.items() if values}
        result.update(
            seconds_to=decade_seconds(self.history),
            iterations=self.iterations,
            total_iterations=int(last.get("iteration", 0)),
            loss=float(last.get("loss", math.nan)),
            l2_error=float(last.get("l2_error", math.nan)),
            relative_l2_error=float(last.get("relative_l2_error", math.nan)),
            seconds=float(last.get("seconds", math.nan)),
            removed=int(np.count_nonzero(self.removed)),
            **extra,
        )
        save_state(self.config.output.path, self.ctx.comm, self.network, self.history, result,
                   to_dict(self.config), np.flatnonzero(self.removed))
        return result


def decade_seconds(history: Mapping[str, list]) -> dict[str, float]:
    """``{"1e-k": seconds}``: when the relative L2 error first reached each decade 1e-k."""
    out: dict[str, float] = {}
    errors = np.asarray(history.get("relative_l2_error", []), dtype=float)
    seconds = np.asarray(history.get("seconds", []), dtype=float)
    for k in range(1, 17):
        reached = np.flatnonzero(errors <= 10.0**-k)
        if not reached.size:
            break
        out[f"1e-{k}"] = float(seconds[reached[0]])
    return out


def _append(history: dict[str, list], row: Mapping[str, float]) -> None:
    """Append one row, padding keys that are new or missing with NaN."""
    length = len(history.get("iteration", []))
    for key in set(history) | set(row):
        column = history.setdefault(key, [math.nan] * length)
        column.append(float(row.get(key, math.nan)))


def check_train_config(config: Config) -> None:
    """Raise InputError naming the key for an unknown method or variant or a bad limit."""
    cfg = config.train
    if cfg.method not in METHODS:
        raise InputError(f"config key train.method = {cfg.method!r} is not one of "
                         f"{', '.join(METHODS)}")
    if cfg.variant not in sggn.VARIANTS:
        raise InputError(f"config key train.variant = {cfg.variant!r} is not one of "
                         f"{', '.join(sggn.VARIANTS)}")
    if cfg.max_iter < 0 or cfg.max_seconds <= 0 or cfg.tol < 0 or cfg.gtol < 0 or \
            cfg.patience < 1:
        raise InputError("config keys train.max_iter, tol, gtol must be >= 0, max_seconds > 0 "
                         "and patience >= 1")
    baselines.check_config(cfg)


def train(problem: Problem, config: Config, comm: MPI.Comm,
          restart: tuple[Network, Mapping[str, np.ndarray]] | None = None) -> dict:
    """Fit ``problem.target`` with the configured method; write the run file. Collective.

    Parameters
    ----------
    problem : Problem
        Domain, target and starting network (user order).
    config : Config
        ``[train]`` (method, variant, limits, method keys), ``[solver]`` (the linear solver of the
        c-solves and of SgGN's Gauss-Newton solves) and ``[output] path``.
    comm : MPI.Comm
        The ranks.
    restart : (Network, dict) or None
        A saved network and history to continue (``checkpoint.load_state``); the network
        replaces ``problem.network``.

    Returns
    -------
    dict
        JSON-ready: method, variant, n, ranks, iterations, total_iterations, loss, l2_error,
        relative_l2_error, initial_loss, seconds, stop_reason, removed, solver.
    """
    check_train_config(config)
    cfg = config.train
    network = problem.network if restart is None else restart[0]
    history = {} if restart is None else {k: list(np.asarray(v, dtype=float).ravel())
                                          for k, v in restart[1].items()}
    ctx = Context(problem, comm, config.solver, cfg.deterministic)
    result = {"method": cfg.method, "variant": cfg.variant if cfg.method == "sggn" else "",
              "n": network.n, "dim": problem.domain.dim, "ranks": comm.size,
              "solver": config.solver.kind, "target": problem.target.name}
    recorder = Recorder(ctx, config, history, result)
    state, start = sggn.start(ctx, network)
    result["initial_loss"] = state.loss
    deflated = 0 if start is None else start.deflated
    log.info(f"{cfg.method}: n = {network.n}, {comm.size} rank(s), solver {config.solver.kind}; "
             f"start: loss {state.loss:.6e}, {int(state.removed.sum())} dead, "
             + ("c given" if start is None else f"{deflated} deflated in the c-solve"))
    recorder(state.network, state.removed,
             {"loss": state.loss, "l2_error": state.l2_error, "step": 0.0,
              "active": int((~state.removed).sum()), "deflated": deflated,
              "solver_seconds": 0.0 if start is None else start.seconds}, initial=True)
    try:
        if cfg.max_iter == 0:
            reason = "max_iter"
        elif cfg.method == "sggn":
            reason = sggn.run(ctx, state, cfg, recorder)
        else:
            reason = baselines.run(ctx, state, cfg, recorder)
    except SolverError as exc:
        log.warning(f"{cfg.method}: stopped, the linear solver failed: {exc}")
        reason = "solver_failed"
    final = recorder.save({"stop_reason": reason})
    log.info(f"{cfg.method}: stopped ({reason}) after {final['iterations']} iterations, "
             f"{final['seconds']:.2f}s: loss {final['loss']:.6e}, L2 error {final['l2_error']:.3e} "
             f"(relative {final['relative_l2_error']:.3e})")
    if reason in SOLVER_FAILURES:
        raise SolverError(f"training stopped ({reason}) after {final['iterations']} iterations; "
                          f"the run file {config.output.path} holds the last iterate")
    return final
