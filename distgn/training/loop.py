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
               level), ``hop_tol`` (SgGN, after a hop or a growth: over the last ``patience``
               iterations the loss fell by at most ``hop_tol`` times itself),
               ``gn_solve_failed`` (G
               breaks down with every deflation and with the shifted hss fallback),
               ``c_solve_failed`` (the c-solve failed on every deflation rung in 3
               consecutive iterations; each failure is a warning with its reason),
               ``no_movable_neurons``, and the baselines' reasons (distgn.training.baselines)
============== ==============================================================================

Basin hopping (SgGN, ``[train] hops``, 1D and 2D): a stop with ``tol``, ``hop_tol``, ``gtol``
or ``line_search`` is followed by a hop out of the basin (distgn.training.sggn.run), until
``hops`` hops are done; the limits count the hops' iterations and time. The run file then holds
the best iterate of all basins, the history the whole path (a hop is a row with ``hop = 1``,
which restarts the ``tol`` window); checkpoints hold the current iterate and the best one.

Staged growth (SgGN, ``[train] grow_from``, distgn.training.growth): the run starts with
``grow_from`` neurons and, each time a stage has converged (after the hops), grows its best
iterate to the next of ``TrainConfig.stage_sizes`` (a history row with ``grow = 1``, which
restarts the window like a hop; the column ``n`` is the network's size at each row). The limits
count all stages; a run stopped by them before the last stage ends with that stage's network
(the result's ``n``). Checkpoints hold the stage's network and ``stage``.

A run that stops because a linear solver failed (``gn_solve_failed``, ``c_solve_failed``,
``solver_failed``) writes its run file and then raises SolverError: ``distgn train`` exits with
status 2 (README, "Exit status").

The result records ``seconds_to``: for each decade ``1e-k`` of the relative L2 error reached, the
run's seconds at the first iterate at or below it (from the history, so restarts keep them).

Every iteration is appended to the history (``iteration, loss, l2_error, relative_l2_error, step,
active, seconds, solver_seconds, grad_norm`` and the method's own counters) and logged on rank 0
every ``log_every`` iterations. ``max_iter`` counts all iterations of the run, restarts included;
``max_seconds`` is this process's wall time.

Checkpoints (``[checkpoint]``, distgn.io schema) hold the complete state: network (user order,
removed neurons recorded), history, the method's state (SgGN: the iterate and its loss, the
hops done and the best iterate; Adam: theta and both moments; BFGS: theta, gradient,
inverse-Hessian approximation; LM: theta, damping), the stopping counters and timings. They
are written every ``checkpoint.every`` iterations, when ``checkpoint.seconds`` passed since the
last one, and when a signal arrived (distgn.signals: the ranks agree once per iteration, write
the checkpoint and raise ``Interrupted``). The finished run goes to ``output.path`` in the same
schema. ``train`` with ``restart`` continues from such a file
without recomputing the start (SgGN's normalisation is not idempotent in 2D): on the same number
of ranks the continued run is bit-identical to an uninterrupted one. ``train`` is collective; the
result is the same on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from distgn import signals
from distgn.config import Config
from distgn.errors import InputError, SolverError
from distgn.io import RunState, save_run
from distgn.network import Network, initial_network, validate
from distgn.parallel import log
from distgn.problem import Problem
from distgn.training import baselines, sggn
from distgn.training.objective import Context

METHODS = ("sggn", "adam", "bfgs", "lm")
# Stop reasons of a failed linear solver: the run file is written, then SolverError (exit 2).
SOLVER_FAILURES = ("gn_solve_failed", "c_solve_failed", "solver_failed")
# History columns of SgGN's jumps to a new iterate (a basin hop, a growth): each restarts the
# stopping window.
JUMPS = ("hop", "grow")


def checkpoint_path(config: Config, output: str) -> str:
    """``checkpoint.path``, or ``<output stem>.ckpt.h5`` next to ``output``."""
    if config.checkpoint.path:
        return config.checkpoint.path
    stem = output[:-3] if output.endswith(".h5") else output
    return f"{stem}.ckpt.h5"


class Recorder:
    """Per-iteration bookkeeping shared by all methods: history, log, stopping, checkpoints,
    signals.

    Calling it with the new iterate (and the method's state, ``optimizer``) returns a stop reason
    or None, or raises ``signals.Interrupted`` after checkpointing when a signal arrived.
    Collective (every rank calls it with the same values; rank 0's clock decides
    ``max_seconds`` and ``checkpoint.seconds``).
    """

    def __init__(
        self,
        ctx: Context,
        config: Config,
        history: dict[str, list],
        result: dict,
        output: str,
        resume: RunState | None = None,
    ) -> None:
        self.ctx, self.config, self.cfg = ctx, config, config.train
        self.history = history
        self.result = result
        self.output = output
        self.checkpoint = checkpoint_path(config, output)
        saved = resume.optimizer if resume is not None else {}
        self.base = int(saved.get("iteration", 0))
        self.offset = float(resume.timings.get("seconds_total", 0.0)) if resume else 0.0
        self.iterations = 0
        self.clock = time.perf_counter()
        # The stopping window: the last patience + 1 losses since the last hop or growth (from
        # the history on a restart).
        length = len(history.get("loss", []))
        jumps = np.flatnonzero(
            np.any([np.asarray(history.get(key, [0.0] * length)) == 1.0 for key in JUMPS], axis=0)
        )
        losses = history.get("loss", [])[jumps[-1] if jumps.size else 0 :]
        self.hopped = bool(jumps.size)
        self.losses = [float(v) for v in losses][-self.cfg.patience - 1 :]
        self.initial_loss = float(history["loss"][0]) if history.get("loss") else math.nan
        self.network: Network | None = None
        self.removed: np.ndarray | None = None
        self.state: dict[str, object] = {}
        self.last_checkpoint = 0.0
        self.checkpoint_seconds = 0.0
        self.u_norm = math.sqrt(max(ctx.target_norms[1], 0.0))

    def elapsed(self) -> float:
        """Seconds since the run started (rank 0's clock, broadcast). Collective."""
        return float(self.ctx.comm.bcast(time.perf_counter() - self.clock, root=0))

    def __call__(
        self,
        network: Network,
        removed: np.ndarray,
        stats: Mapping[str, float],
        initial: bool = False,
        optimizer: Mapping[str, object] | None = None,
    ) -> str | None:
        """Record an iterate (``initial``: the starting one) and decide whether to stop."""
        self.network, self.removed = network, removed
        self.state = {
            "loss": float(stats["loss"]),
            "l2_error": float(stats["l2_error"]),
            **(optimizer or {}),
        }
        loss = float(stats["loss"])
        elapsed = self.elapsed()
        if initial and not self.history.get("iteration"):
            self.initial_loss = loss
        self.iterations += 0 if initial else 1
        row = {
            "iteration": self.base + self.iterations,
            "seconds": self.offset + elapsed,
            "relative_l2_error": stats["l2_error"] / self.u_norm if self.u_norm else math.nan,
            "n": network.n,
            **stats,
        }
        _append(self.history, row)
        self._log(row, elapsed, initial)
        jump = any(stats.get(key) for key in JUMPS)
        self.hopped = self.hopped or jump
        window = [] if jump else self.losses
        self.losses = (window + [loss])[-self.cfg.patience - 1 :]
        reason = (
            None if initial else self._stop(loss, float(stats.get("grad_norm", math.nan)), elapsed)
        )
        if reason is not None:
            return reason
        signum = signals.arrived(self.ctx.comm)
        if signum:
            self.save("checkpoint", {"stop_reason": f"signal {signum}"})
            raise signals.Interrupted(signum, self.checkpoint)
        every, seconds = self.config.checkpoint.every, self.config.checkpoint.seconds
        due = every > 0 and (self.base + self.iterations) % every == 0
        due = due or (seconds > 0 and elapsed - self.last_checkpoint >= seconds)
        if due and not initial:
            self.save("checkpoint", {"stop_reason": "running"})
            self.last_checkpoint = elapsed
        return None

    def keep(self, network: Network, removed: np.ndarray, loss: float, l2_error: float) -> None:
        """Make an earlier iterate (basin hopping's best) the one the run file holds."""
        self.network, self.removed = network, removed
        self.state = {**self.state, "loss": float(loss), "l2_error": float(l2_error)}

    def _stop(self, loss: float, grad_norm: float, elapsed: float) -> str | None:
        """The stop reason after an iteration (module docstring), or None."""
        window = self.losses[0]
        full = len(self.losses) > self.cfg.patience
        if loss == 0.0 or full and 0.0 <= window - loss <= self.cfg.tol * self.initial_loss:
            return "tol"
        if self.hopped and full and 0.0 <= window - loss <= self.cfg.hop_tol * loss:
            return "hop_tol"
        if grad_norm <= self.cfg.gtol:
            return "gtol"
        if self.base + self.iterations >= self.cfg.max_iter:
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
            remaining = min(
                (self.cfg.max_iter - self.base - self.iterations) * per_iteration,
                self.cfg.max_seconds - elapsed,
            )
            eta = f"  eta {max(remaining, 0.0):.1f}s"
        log.info(
            f"{self.cfg.method} it {int(row['iteration']):5d}  loss {row['loss']:.6e}  "
            f"L2 {row['l2_error']:.3e} (rel {row['relative_l2_error']:.2e})  "
            f"step {row.get('step', math.nan):.3g}  active {int(row.get('active', 0))}  "
            f"solver {row.get('solver_seconds', 0.0):.3f}s{eta}"
        )

    def save(self, kind: str, extra: Mapping[str, object]) -> dict:
        """Write a checkpoint (``kind = "checkpoint"``, to ``checkpoint.path``) or the run file
        (``"result"``, to the output); return the result. Collective."""
        start = time.perf_counter()
        result = dict(self.result)
        this_run = self.elapsed()
        l2_error = float(self.state.get("l2_error", math.nan))
        result.update(
            n=self.network.n,
            seconds_to=decade_seconds(self.history),
            iterations=self.iterations,
            total_iterations=self.base + self.iterations,
            loss=float(self.state.get("loss", math.nan)),
            l2_error=l2_error,
            relative_l2_error=l2_error / self.u_norm if self.u_norm else math.nan,
            seconds=this_run,
            total_seconds=self.offset + this_run,
            removed=int(np.count_nonzero(self.removed)),
            **extra,
        )
        optimizer = {
            **self.state,
            "method": self.cfg.method,
            "iteration": self.base + self.iterations,
        }
        timings = {
            "seconds_total": self.offset + this_run,
            "seconds_this_run": this_run,
            "seconds_checkpoints": self.checkpoint_seconds,
        }
        checkpoint = kind == "checkpoint"
        save_run(
            self.checkpoint if checkpoint else self.output,
            self.ctx.comm,
            self.config,
            kind,
            self.network,
            self.removed,
            self.history,
            optimizer,
            result,
            timings,
            keep=self.config.checkpoint.keep if checkpoint else 1,
        )
        self.checkpoint_seconds += self.ctx.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
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


def stage_sizes(config: Config) -> list[int]:
    """The network sizes of the run's stages (``TrainConfig.stage_sizes``; one without staged
    growth). InputError for staged growth with another method than SgGN or from a network
    file."""
    cfg = config.train
    sizes = cfg.stage_sizes(config.network.n)
    if len(sizes) > 1 and cfg.method != "sggn":
        raise InputError(
            f"train.grow_from = {cfg.grow_from}: staged growth needs train.method = sggn"
        )
    if len(sizes) > 1 and config.network.init == "file":
        raise InputError(
            f"train.grow_from = {cfg.grow_from}: staged growth starts from a generated network, "
            "not network.init = file"
        )
    return sizes


def train(
    problem: Problem,
    config: Config,
    comm: MPI.Comm,
    restart: RunState | None = None,
    output: str | None = None,
) -> dict:
    """Fit ``problem.target`` with the configured method; write checkpoints and the run file.
    Collective.

    Parameters
    ----------
    problem : Problem
        Domain, target and starting network (user order).
    config : Config
        ``[train]`` (method, variant, limits, method keys), ``[solver]`` (the linear solver of the
        c-solves and of SgGN's Gauss-Newton solves), ``[checkpoint]`` and ``[output] path``.
    comm : MPI.Comm
        The ranks.
    restart : RunState or None
        A checkpoint or finished run (``io.read_run``) to continue exactly: its network replaces
        ``problem.network``, its history and optimizer state are continued. The method's state is
        dropped (with a warning) when the file was written by another method.
    output : str or None
        The run file (default ``config.output.path``, else ``run.train.h5``).

    Returns
    -------
    dict
        JSON-ready: method, variant, n, ranks, iterations (this run), total_iterations, loss,
        l2_error, relative_l2_error, initial_loss, seconds (this run), total_seconds,
        stop_reason, removed, solver; SgGN also hops (done).

    Raises
    ------
    signals.Interrupted
        A signal arrived (inside ``signals.deferred()``); a checkpoint was written.
    """
    cfg = config.train
    if cfg.method == "sggn" and cfg.hops and problem.domain.dim > 2:
        raise InputError(f"train.hops = {cfg.hops}: basin hopping needs a 1D or 2D domain")
    sizes = stage_sizes(config)
    output = output or config.output.path or "run.train.h5"
    ctx = Context(problem, comm, config.solver, cfg.deterministic)
    resume = None
    if restart is None and len(sizes) > 1:
        net = config.network
        network = initial_network(problem.domain, sizes[0], net.init, net.seed, net.orientation)
        validate(network, problem.domain)
        history: dict[str, list] = {}
    elif restart is None:
        network, history = problem.network, {}
    else:
        network = restart.network
        history = {k: list(np.asarray(v, dtype=float).ravel()) for k, v in restart.history.items()}
        resume = dict(restart.optimizer)
        if resume.get("method") != cfg.method:
            log.warning(
                f"{cfg.method}: {restart.path} was written by {resume.get('method')}; "
                "continuing from its network with a fresh optimizer state"
            )
            resume = {k: v for k, v in resume.items() if k in ("iteration", "loss", "l2_error")}
    result = {
        "method": cfg.method,
        "variant": cfg.variant if cfg.method == "sggn" else "",
        "n": network.n,
        "dim": problem.domain.dim,
        "ranks": comm.size,
        "solver": config.solver.kind,
        "target": problem.target.name,
    }
    recorder = Recorder(ctx, config, history, result, output, restart)
    if resume is None:
        state, start = sggn.start(ctx, network, sggn.initial_damping(ctx, cfg))
        deflated = 0 if start is None else start.deflated
        log.info(
            f"{cfg.method}: n = {network.n}, {comm.size} rank(s), solver "
            f"{config.solver.kind}; start: loss {state.loss:.6e}, "
            f"{int(state.removed.sum())} dead, "
            + ("c given" if start is None else f"{deflated} deflated in the c-solve")
        )
        stop = recorder(
            state.network,
            state.removed,
            {
                "loss": state.loss,
                "l2_error": state.l2_error,
                "step": 0.0,
                "active": int((~state.removed).sum()),
                "deflated": deflated,
                "solver_seconds": 0.0 if start is None else start.seconds,
            },
            initial=True,
        )
        result["initial_loss"] = state.loss
    else:
        # No sggn.start: its normalisation is not idempotent in 2D, and the saved iterate is
        # exactly where the interrupted run was.
        state = sggn.State(
            network,
            restart.removed,
            float(resume["loss"]),
            float(resume["l2_error"]),
            float(resume.get("damping", sggn.initial_damping(ctx, cfg))),
        )
        recorder.network, recorder.removed = state.network, state.removed
        recorder.state = resume
        result["initial_loss"] = float(restart.result.get("initial_loss", state.loss))
        log.info(
            f"{cfg.method}: n = {network.n}, {comm.size} rank(s), solver "
            f"{config.solver.kind}; continuing {restart.path} after iteration "
            f"{recorder.base}: loss {state.loss:.6e}"
        )
        stop = "max_iter" if recorder.base >= cfg.max_iter else None
    try:
        if stop is not None or cfg.max_iter <= recorder.base:
            reason = stop or "max_iter"
        elif cfg.method == "sggn":
            reason, best = sggn.run(ctx, state, cfg, recorder, resume, sizes)
            recorder.keep(best.network, best.removed, best.loss, best.l2_error)
            result["hops"] = int(recorder.state.get("hops", 0))
        else:
            reason = baselines.run(ctx, state, cfg, recorder, resume)
    except SolverError as exc:
        log.warning(f"{cfg.method}: stopped, the linear solver failed: {exc}")
        reason = "solver_failed"
    final = recorder.save("result", {"stop_reason": reason})
    log.info(
        f"{cfg.method}: stopped ({reason}): this run {final['iterations']} iterations in "
        f"{final['seconds']:.2f} s; in all {final['total_iterations']} iterations, "
        f"{final['total_seconds']:.2f} s; loss {final['loss']:.6e}, L2 error "
        f"{final['l2_error']:.3e} (relative {final['relative_l2_error']:.3e})"
        + (f", the best of {final['hops'] + 1} basins" if final.get("hops") else "")
        + f"; wrote {output}"
    )
    if reason in SOLVER_FAILURES:
        raise SolverError(
            f"training stopped ({reason}) after {final['iterations']} iterations; "
            f"the run file {output} holds the last iterate"
        )
    return final
