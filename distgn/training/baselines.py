"""Baseline optimizers on all parameters (c, c0, W, b): Adam, BFGS and Levenberg-Marquardt.

They use the same exact objective as SgGN (``objective.loss_and_gradient``: exact pair integrals
and target moments; the 1D loss by direct Gauss rules, the 2D one with the cancelling neurons on
the cells of their lines) and start from the same iterate (``training``:
normalised network with its least-squares c). Parameters are packed as
``theta = (c, [c0], r_1, ..., r_n)`` with ``r_i = (w_i, b_i)``; no renormalisation is done.

- ``adam``: Kingma & Ba with beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 on exact gradients;
  learning rate ``learning_rate * lr_decay**k`` at iteration k (``lr_decay = 1``: constant).
- ``bfgs``: BFGS (Nocedal & Wright, "Numerical Optimization", 2006, algorithm 6.1) with the exact
  loss and gradient: ``H_0 = I``, direction ``-H g``, a strong-Wolfe line search
  (``scipy.optimize.line_search``, c1 = 1e-4, c2 = 0.9, started like scipy's BFGS) and the
  inverse update ``H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T`` written as a rank-2
  correction. Implemented here, not through ``scipy.optimize.minimize``, so that its state
  (theta, gradient, H, the last two losses) can be checkpointed. It stops with
  ``bfgs_converged`` (gradient norm <= ``gtol``) or ``bfgs_precision_loss`` (no step satisfies
  the Wolfe conditions).
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
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import scipy.linalg
import scipy.optimize

from distgn.assembly import ONE, target_moments
from distgn.config import TrainConfig
from distgn.network import Network, activity
from distgn.training.objective import Context, Gradient, loss_and_gradient, owned_rows, pair_rows
from distgn.training.sggn import State

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
LM_INITIAL_DAMPING = 1e-3

Record = Callable[..., "str | None"]
Resume = Mapping[str, object] | None


def pack(network: Network) -> np.ndarray:
    """``theta = (c, [c0], r.ravel())``."""
    head = [network.c] + ([np.array([network.c0])] if network.c0 is not None else [])
    return np.concatenate(head + [network.r.ravel()])


def unpack(theta: np.ndarray, template: Network) -> Network:
    """The network with parameters ``theta`` (shapes and output bias from ``template``)."""
    n, k = template.n, template.dim + 1
    bias = template.c0 is not None
    network = template.with_r(theta[n + bias :].reshape(n, k))
    return Network(network.W, network.b, theta[:n].copy(), float(theta[n]) if bias else None)


def flat_gradient(grad: Gradient) -> np.ndarray:
    """The gradient packed like ``pack``."""
    head = [grad.c] + ([np.array([grad.c0])] if grad.c0 is not None else [])
    return np.concatenate(head + [grad.r.ravel()])


def _stats(ctx: Context, network: Network, grad: Gradient, **extra: float) -> dict:
    active = int(np.count_nonzero(~activity(network.W, network.b, ctx.problem.domain)[0]))
    return {
        "loss": grad.loss,
        "l2_error": grad.l2_error,
        "grad_norm": grad.norm(),
        "active": active,
        **extra,
    }


def adam(
    ctx: Context, state: State, cfg: TrainConfig, record: Record, resume: Resume = None
) -> str:
    """Adam on theta with exact gradients, from ``state`` or the saved ``resume`` (theta, both
    moments, k). Collective."""
    if resume is not None and "first" in resume:
        theta = np.array(resume["theta"], dtype=float)
        first = np.array(resume["first"], dtype=float)
        second = np.array(resume["second"], dtype=float)
        k = int(resume["k"])
    else:
        theta = pack(state.network)
        first, second = np.zeros_like(theta), np.zeros_like(theta)
        k = 0
    beta1, beta2 = ADAM_BETAS
    grad = loss_and_gradient(ctx, unpack(theta, state.network))
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
        reason = record(
            network,
            state.removed,
            _stats(ctx, network, grad, step=float(np.linalg.norm(step)), learning_rate=rate),
            optimizer={"theta": theta, "first": first, "second": second, "k": k},
        )
        if reason is not None:
            return reason


def bfgs(
    ctx: Context, state: State, cfg: TrainConfig, record: Record, resume: Resume = None
) -> str:
    """BFGS on theta with the exact loss and gradient, from ``state`` or the saved ``resume``
    (theta, gradient, inverse-Hessian approximation, the last two losses). Collective."""
    template = state.network
    evaluated: dict[bytes, Gradient] = {}

    def evaluate(theta: np.ndarray) -> Gradient:
        key = theta.tobytes()
        if key not in evaluated:
            if len(evaluated) > 64:
                evaluated.clear()
            evaluated[key] = loss_and_gradient(ctx, unpack(theta, template))
        return evaluated[key]

    if resume is not None and "inverse_hessian" in resume:
        theta = np.array(resume["theta"], dtype=float)
        g = np.array(resume["gradient"], dtype=float)
        H = np.array(resume["inverse_hessian"], dtype=float)
        loss = float(resume["loss"])
        older = float(resume["line_search_previous_loss"])
    else:
        theta = pack(template)
        first = evaluate(theta)
        g, H, loss = flat_gradient(first), np.eye(theta.size), first.loss
        older = loss + float(np.linalg.norm(g)) / 2  # scipy's BFGS: the first trial step
    while True:
        if float(np.linalg.norm(g)) <= cfg.gtol:
            return "bfgs_converged"
        p = -(H @ g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # LineSearchWarning
            alpha, _, _, new_loss, _, new_g = scipy.optimize.line_search(
                lambda x: evaluate(x).loss,
                lambda x: flat_gradient(evaluate(x)),
                theta,
                p,
                g,
                loss,
                older,
                c1=1e-4,
                c2=0.9,
                amax=1e100,
            )
        if alpha is None or not np.isfinite(new_loss):
            return "bfgs_precision_loss"
        new_theta = theta + alpha * p
        new_g = flat_gradient(evaluate(new_theta)) if new_g is None else np.asarray(new_g)
        s, y = new_theta - theta, new_g - g
        curvature = float(y @ s)
        rho = 1000.0 if curvature == 0.0 else 1.0 / curvature  # scipy's guard
        Hy = H @ y
        H = (
            H
            - rho * (np.outer(s, Hy) + np.outer(Hy, s))
            + (rho * rho * float(y @ Hy) + rho) * np.outer(s, s)
        )
        theta, g, older, loss = new_theta, new_g, loss, float(new_loss)
        network = unpack(theta, template)
        reason = record(
            network,
            state.removed,
            _stats(ctx, network, evaluate(theta), step=float(np.linalg.norm(s))),
            optimizer={
                "theta": theta,
                "gradient": g,
                "inverse_hessian": H,
                "line_search_previous_loss": older,
            },
        )
        if reason is not None:
            return reason


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
        c_rows[lo : lo + m, :n] = part["A"]
        c_rows[lo : lo + m, n:] = (
            np.einsum("ijlk,il->ijk", G, r[chunk]) * c[None, :, None]
        ).reshape(m, n * k)
        r_rows[lo * k : (lo + m) * k, :n] = (
            np.einsum("ijkl,jl->ikj", G, r) * c[chunk, None, None]
        ).reshape(m * k, n)
        r_rows[lo * k : (lo + m) * k, n:] = (
            (G * (c[chunk, None, None, None] * c[None, :, None, None]))
            .transpose(0, 2, 1, 3)
            .reshape(m * k, n * k)
        )
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
    M = np.insert(M, n, bias[np.r_[0:n, n + 1 : bias.size]], axis=0)
    return np.insert(M, n, bias, axis=1)


def levenberg_marquardt(
    ctx: Context, state: State, cfg: TrainConfig, record: Record, resume: Resume = None
) -> str:
    """Levenberg-Marquardt on theta with the exact ``J^T J``, from ``state`` or the saved
    ``resume`` (theta, damping mu, its growth factor nu). Collective."""
    comm = ctx.comm
    template = state.network
    if resume is not None and "damping" in resume:
        theta = np.array(resume["theta"], dtype=float)
        mu, nu = float(resume["damping"]), float(resume["nu"])
    else:
        theta, mu, nu = pack(template), None, 2.0
    network = unpack(theta, template)
    grad = loss_and_gradient(ctx, network)
    M = gauss_newton_matrix(ctx, network)
    if mu is None and comm.rank == 0:
        mu = LM_INITIAL_DAMPING * float(np.max(np.diag(M)))
    while True:
        g = flat_gradient(grad)
        start = time.perf_counter()
        h = None
        if comm.rank == 0:
            while math.isfinite(mu):
                try:
                    h = scipy.linalg.cho_solve(
                        scipy.linalg.cho_factor(M + mu * np.eye(M.shape[0])), -g
                    )
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
            reason = record(
                trial,
                state.removed,
                _stats(
                    ctx,
                    trial,
                    grad,
                    step=float(np.linalg.norm(h)),
                    damping=mu,
                    solver_seconds=seconds,
                ),
                optimizer={"theta": theta, "damping": mu, "nu": nu},
            )
            if reason is not None:
                return reason
            M = gauss_newton_matrix(ctx, trial)
        else:
            mu, nu = mu * nu, nu * 2


METHODS = {"adam": adam, "bfgs": bfgs, "lm": levenberg_marquardt}


def run(ctx: Context, state: State, cfg: TrainConfig, record: Record, resume: Resume = None) -> str:
    """Run the baseline ``cfg.method`` from ``state`` (or continue the saved ``resume``);
    returns the stop reason. Collective."""
    return METHODS[cfg.method](ctx, state, cfg, record, resume)
