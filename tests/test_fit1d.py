"""1D fits against an independent best-fit computation (tests/reference1d.py, long double).

Every orientation, uniform and random kinks, with and without the output bias, every back end
(hss, krylov with the hat and hss preconditioners, dense where it fits), n from 2^8 to 2^16: the
true L2 error of the returned coefficients is within a small factor of the best fit over the span
of the neurons, and the reported fit error agrees with it. Serial and MPI.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from mpi4py import MPI
from reference1d import best_fit_error, true_error

from distgn.config import load_config
from distgn.fit import solve_output_weights
from distgn.operator import build
from distgn.problem import build_problem

SOLVERS = {
    "hss": ['solver.kind="hss"', "solver.matrix_free=true"],
    "cg-hat": [
        'solver.kind="krylov"',
        "solver.matrix_free=true",
        'solver.petsc_options="-distgn_pc_type hat"',
    ],
    "cg-hss": [
        'solver.kind="krylov"',
        "solver.matrix_free=true",
        'solver.petsc_options="-distgn_pc_type hss"',
    ],
    "dense": ['solver.kind="dense"', "solver.matrix_free=false"],
}
FACTOR = 1.5  # the issue asks for 10; the nodal solve is within rounding of the best fit


def fit(comm: MPI.Comm, sets: list[str]) -> tuple[object, object]:
    """The problem of ``sets`` and its fit with the configured solver on ``comm``."""
    config = load_config(None, sets)
    problem = build_problem(config)
    operator, blocks = build(problem, config.solver, comm, "A")
    out = solve_output_weights(problem, blocks, operator, config.solver)
    return problem, replace(out, c=operator.gather(out.c))  # every rank's coefficients


def check(problem, out, basis: str = "nodal") -> tuple[float, float]:
    """(true error, best error), after asserting that the reported error is the true one."""
    net, target = problem.network, problem.target
    L, R = (float(v) for v in problem.domain.bounds[0])
    c = np.empty(net.n)
    # c comes in tree order: recover the permutation from the breakpoint ordering (ties by sign).
    perm = np.lexsort((np.sign(net.W[:, 0]), -net.b / net.W[:, 0]))
    c[perm] = out.c

    def func(x: np.ndarray) -> np.ndarray:
        return target(x.reshape(-1, 1)).reshape(x.shape)

    true = true_error(net.W[:, 0], net.b, c, out.c0, L, R, func, target.points)
    best = best_fit_error(net.W[:, 0], net.b, problem.output_bias, L, R, func, target.points)
    assert out.stats.get("basis", "relu") == basis
    assert out.l2_error == pytest.approx(true, rel=1e-3)
    return true, best


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("orientation", ["positive", "alternating", "random"])
@pytest.mark.parametrize("init", ["uniform", "random"])
@pytest.mark.parametrize("bias", [False, True])
def test_every_solver_reaches_the_best_fit(comm, orientation, init, bias):
    base = [
        f'network.orientation="{orientation}"',
        f'network.init="{init}"',
        f"network.output_bias={str(bias).lower()}",
        'target.name="sine"',
        "network.n=256",
        "solver.leaf_size=32",
    ]
    for name, sets in SOLVERS.items():
        problem, out = fit(comm, base + sets)
        true, best = check(problem, out)
        assert true <= FACTOR * best, (name, true, best)


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2**12, 2**16])
@pytest.mark.parametrize("target", ["sine", "step"])
def test_large_n_fit_improves_with_n(comm, n, target):
    base = [
        'network.orientation="random"',
        'network.init="random"',
        f'target.name="{target}"',
        f"network.n={n}",
        "network.output_bias=true",
    ]
    for name in ("hss", "cg-hat"):
        problem, out = fit(comm, base + SOLVERS[name])
        true, best = check(problem, out)
        assert true <= FACTOR * best, (name, n, true, best)


@pytest.mark.timeout(300)
def test_fit_error_falls_like_n_minus_2_on_a_smooth_target():
    errors = []
    for n in (2**8, 2**12, 2**16):
        problem, out = fit(
            MPI.COMM_SELF,
            [
                'target.name="sine"',
                f"network.n={n}",
                'solver.kind="krylov"',
                "solver.matrix_free=true",
            ],
        )
        errors.append(check(problem, out)[0])
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 0.8 * 16**2), errors


def test_relu_basis_is_kept_for_comparison():
    sets = ['target.name="sine"', "network.n=256", 'solver.basis="relu"', 'solver.kind="dense"']
    problem, out = fit(MPI.COMM_SELF, sets)
    true, best = check(problem, out, basis="relu")
    assert true <= 10 * best
    with pytest.raises(Exception, match="solver.basis"):
        fit(MPI.COMM_SELF, ['solver.basis="hat"'])
