"""Baseline optimizers on all parameters (c, c0, W, b): Adam, BFGS and Levenberg-Marquardt.

They use the same exact objective as SgGN (``sggn.loss_and_gradient``: exact pair integrals and
target moments; the 1D loss by direct Gauss rules) and start from the same iterate (``training``:
normalised network with its least-squares c). Parameters are packed as
``theta = (c, [c0], r_1, ..., r_n)`` with ``r_i = (w_i, b_i)``; no renormalisation is done.

- ``adam``: Kingma & Ba with beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 on exact gradients;
  learning rate ``learning_rate * lr_decay**k`` at iteration k (``lr_decay = 1``: constant).
- ``bfgs``: ``scipy.optimize.minimize(method="BFGS")`` with the exact loss and gradient (its Wolfe
  line search); scipy's own stop (gradient below ``gtol`` or loss of precision) is reported as
  ``bfgs_converged`` or ``bfgs_precision_loss``.
- ``lm``: Levenberg-Marquardt with the exact Gauss-Newton matrix ``J^T J`` of all parameters built
  from the same Gram integrals (``A``, ``G`` and ``int phi_i h_j xhat = G_(i,j) r_i``); the step
  solves ``(J^T J + mu I) h = -g`` by dense Cholesky on rank 0, ``mu`` starts at
  ``1e-3 max diag(J^T J)`` and follows Nielsen's gain-ratio update (Madsen, Nielsen & Tingleff,
  "Methods for non-linear least squares problems", 2004, algorithm 3.16). Only accepted steps count
  as iterations; the run stops with ``lm_no_progress`` when mu overflows or the step no longer
  changes theta. The dense matrix has ``(n (d+2) + 1)^2`` entries on rank 0: a baseline, not a
  scalable method.

All functions taking a ``Context`` are collective; every rank runs the same iteration on
replicated parameters (the sums are gathered in rank order, so the ranks agree bit for bit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.optimize

from distgn.assembly import ONE, target_moments
from distgn.config import TrainConfig
from distgn.errors import InputError
from distgn.network import Network, activity
from distgn.training.objective import Context, Gradient, loss_and_gradient, owned_rows, pair_rows
from distgn.training.sggn import State

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
LM_INITIAL_DAMPING = 1e-3

Record = Callable[[Network, np.ndarray, dict], "str | None"]


def check_config(cfg: TrainConfig) -> None:
    """Raise InputError for a learning rate or decay out of range."""
    if not cfg.learning_rate > 0:
        raise InputError(f"config key train.learning_rate = {cfg.learning_rate} must be > 0")
    if not 0 < cfg.lr_decay <= 1:
        raise InputError(f"config key train.lr_decay = {cfg.lr_decay} must be in (0, 1]")


def pack(network: Network) -> np.ndarray:
    """``theta = (c, [c0], r.ravel())``."""
    head = [network.c] + ([np.array([network.c0])] if network.c0 is not None else [])
    return np.concatenate(head + [network.r.ravel()])


def unpack(theta: np.ndarray, template: Network) -> Network:
    """The network with parameters ``theta`` (shapes and output bias from ``template``)."""
    n, k = template.n, template.dim + 1
    bias = template.c0 is not None
    network = template.with_r(theta[n + bias:].reshape(n, k))
    return Network(network.W, network.b, theta[:n].copy(), float(theta[n]) if bias else None)


def flat_gradient(grad: Gradient) -> np.ndarray:
    """The gradient packed like ``pack``."""
    head = [grad.c] + ([np.array([grad.c0])] if grad.c0 is not None else [])
    return np.concatenate(head + [grad.r.ravel()])


def _stats(ctx: Context, network: Network, grad: Gradient, **extra: float) -> dict:
    active = int(np.count_nonzero(~activity(network.W, network.b, ctx.problem.domain)[0]))
    return {"loss": grad.loss, "l2_error": grad.l2_error, "grad_norm": grad.norm(),
            "active": active, **extra}


def adam(ctx: Context, state: State, cfg: TrainConfig, record: Record) -> str:
    """Adam on theta with exact gradients. Collective."""
    theta = pack(state.network)
    first, second = np.zeros_like(theta), np.zeros_like(theta)
    beta1, beta2 = ADAM_BETAS
    grad = loss_and_gradient(ctx, state.network)
    k = 0
    while True:
        k += 1
        g = flat_gradient(grad)
        first = beta1 * first + (1 - beta1) * g
        second = beta2 * second + (1 - beta2) * g * g
        rate = cfg.learning_rate * cfg.lr_decay ** (k - 1)
        step = rate * (first / (1 - beta1**k)) / (np.sqrt(second / (1 - beta2**k)) + ADAM_EPSILON)
        theta = theta - step
        network = unpack(theta, state.network)
        grad = loss_and_gradient(ctx, network)
        reason = record(network, state.removed,
                        _stats(ctx, network, grad, step=float(np.linalg.norm(step)),
                               learning_rate=rate))
        if reason is not None:
            return reason


class _Stop(Exception):
    """Raised from scipy's callback to end a BFGS run with the recorder's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bfgs(ctx: Context, state: State, cfg: TrainConfig, record: Record) -> str:
    """scipy BFGS on theta with the exact loss and gradient. Collective."""
    template = state.network
    evaluated: dict[bytes, Gradient] = {}
    previous = [pack(template)]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        key = theta.tobytes()
        if key not in evaluated:
            if len(evaluated) > 64:
                evaluated.clear()
            evaluated[key] = loss_and_gradient(ctx, unpack(theta, template))
        grad = evaluated[key]
        return grad.loss, flat_gradient(grad)

    def callback(theta: np.ndarray) -> None:
        fun(theta)
        network = unpack(theta, template)
        step = float(np.linalg.norm(theta - previous[0]))
        previous[0] = theta.copy()
        reason = record(network, state.removed,
                        _stats(ctx, network, evaluated[theta.tobytes()], step=step))
        if reason is not None:
            raise _Stop(reason)

    try:
        out = scipy.optimize.minimize(fun, pack(template), jac=True, method="BFGS",
                                      callback=callback,
                                      options={"maxiter": cfg.max_iter + 1, "gtol": cfg.gtol,
                                               "norm": 2})
    except _Stop as stop:
        return stop.reason
    return "bfgs_converged" if out.success else "bfgs_precision_loss"


def gauss_newton_matrix(ctx: Context, network: Network) -> np.ndarray | None:
    """``J^T J`` of v in theta (layout of ``pack``), on rank 0 (None elsewhere). Collective.

    Blocks: ``A`` (c, c), ``int phi_i`` (c, c0), ``|Omega|`` (c0, c0),
    ``c_j int phi_i h_j xhat = c_j G_(i,j) r_i`` (c, r), ``c_j int h_j xhat`` (c0, r) and
    ``c_i c_j G_(i,j)`` (r, r).
    """
    problem, comm = ctx.problem, ctx.comm
    n, k = network.n, network.dim + 1
    r, c = network.r, network.c
    everyone = np.arange(n)
    rows = owned_rows(comm, everyone)
    c_rows = np.zeros((rows.size, n + n * k))
    r_rows = np.zeros((rows.size * k, n + n * k))
    offset = 0
    for chunk, part in pair_rows(problem, network, rows, everyone, ("A", "G")):
        G = part["G"]
        m = chunk.size
        lo = offset
        c_rows[lo:lo + m, :n] = part["A"]
        c_rows[lo:lo + m, n:] = (np.einsum("ijlk,il->ijk", G, r[chunk])
                                 * c[None, :, None]).reshape(m, n * k)
        r_rows[lo * k:(lo + m) * k, :n] = (np.einsum("ijkl,jl->ikj", G, r)
                                           * c[chunk, None, None]).reshape(m * k, n)
        r_rows[lo * k:(lo + m) * k, n:] = (G * (c[chunk, None, None, None] * c[None, :, None, None])
                                           ).transpose(0, 2, 1, 3).reshape(m * k, n * k)
        offset += m
    ones = target_moments(problem.domain, ONE, network.W, network.b, rows)
    mass = np.einsum("ik,ik->i", ones, r[rows])
    parts = comm.gather((c_rows, r_rows, mass, ones), root=0)
    if comm.rank != 0:
        return None
    C = np.concatenate([p[0] for p in parts])
    R = np.concatenate([p[1] for p in parts])
    mass = np.concatenate([p[2] for p in parts])
    ones = np.concatenate([p[3] for p in parts])
    M = np.vstack([C, R])
    if network.c0 is None:
        return M
    bias = np.concatenate([mass, [problem.domain.measure], (c[:, None] * ones).ravel()])
    M = np.insert(M, n, bias[np.r_[0:n, n + 1:bias.size]], axis=0)
    return np.insert(M, n, bias, axis=1)


def levenberg_marquardt(ctx: Context, state: State, cfg: TrainConfig, record: Record) -> str:
    """Levenberg-Marquardt on theta with the exact ``J^T J``. Collective."""
    comm = ctx.comm
    template = state.network
    theta = pack(template)
    grad = loss_and_gradient(ctx, template)
    M = gauss_newton_matrix(ctx, template)
    mu = LM_INITIAL_DAMPING * float(np.max(np.diag(M))) if comm.rank == 0 else None
    nu = 2.0
    while True:
        g = flat_gradient(grad)
        start = time.perf_counter()
        h = None
        if comm.rank == 0:
            while math.isfinite(mu):
                try:
                    h = scipy.linalg.cho_solve(
                        scipy.linalg.cho_factor(M + mu * np.eye(M.shape[0])), -g)
                    break
                except np.linalg.LinAlgError:
                    mu, nu = mu * nu, nu * 2
        h, mu = comm.bcast((h, mu), root=0)
        seconds = time.perf_counter() - start
        if h is None or not np.any(theta + h != theta):
            return "lm_no_progress"
        trial = unpack(theta + h, template)
        new = loss_and_gradient(ctx, trial)
        predicted = 0.5 * float(h @ (mu * h - g))
        gain = (grad.loss - new.loss) / predicted if predicted > 0 else -1.0
        if gain > 0:
            theta, grad = theta + h, new
            mu, nu = mu * max(1 / 3, 1 - (2 * gain - 1) ** 3), 2.0
            reason = record(trial, state.removed,
                            _stats(ctx, trial, grad, step=float(np.linalg.norm(h)), damping=mu,
                                   solver_seconds=seconds))
            if reason is not None:
                return reason
            M = gauss_newton_matrix(ctx, trial)
        else:
            mu, nu = mu * nu, nu * 2


METHODS = {"adam": adam, "bfgs": bfgs, "lm": levenberg_marquardt}


def run(ctx: Context, state: State, cfg: TrainConfig, record: Record) -> str:
    """Run the baseline ``cfg.method`` from ``state``; returns the stop reason. Collective."""
    return METHODS[cfg.method](ctx, state, cfg, record)
