"""The ridge of the neuron-basis least-squares solve (``solver.regularization``): every back end
solves ``(A + delta diag(A)) c = F`` (checked against LAPACK on the whole matrix), stored rows come
back bit for bit, and CG with the hss preconditioner converges on the 2D examples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sla
from mpi4py import MPI

from distgn.assembly import target_integrals
from distgn.config import load_config
from distgn.fit import solve_output_weights
from distgn.operator import build, regularised
from distgn.problem import build_problem

DELTA = 1e-6
CASES = {
    "dense": ['solver.kind="dense"'],
    "hss": ['solver.kind="hss"', "solver.tol=1e-12"],
    "krylov-jacobi": [
        'solver.kind="krylov"',
        'solver.petsc_options="-distgn_pc_type jacobi"',
        "solver.rtol=1e-12",
        "solver.max_iter=5000",
    ],
    "krylov-hss-matrix-free": [
        'solver.kind="krylov"',
        'solver.petsc_options="-distgn_pc_type hss"',
        "solver.matrix_free=true",
        "solver.rtol=1e-12",
    ],
    "hss-1d-relu-matrix-free": [
        'solver.kind="hss"',
        'solver.basis="relu"',
        "solver.matrix_free=true",
        "solver.tol=1e-12",
    ],
}


def problem_sets(case: str) -> list[str]:
    common = [
        f"solver.regularization={DELTA}",
        "solver.leaf_size=8",
        'network.init="random"',
        "network.output_bias=true",
    ]
    if case.startswith("hss-1d"):
        return [*common, "network.n=40", 'target.name="sine"']
    return [
        *common,
        "network.n=48",
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
        'target.name="disk"',
    ]


def user_order(c_tree: np.ndarray, perm: np.ndarray) -> np.ndarray:
    c = np.empty_like(c_tree)
    c[perm] = c_tree
    return c


def reference(sets: list[str]) -> tuple[np.ndarray, float, float, float]:
    """LAPACK on the whole stored matrix, one rank: c (user order), c0, the fit error
    ``sqrt(||u||^2 - 2 (c.F + c0 int u) + [c; c0]^T [[A, s], [s^T, |Omega|]] [c; c0])`` and the
    penalty ``delta sum_i A_ii c_i^2``."""
    config = load_config(None, [*sets, 'solver.kind="dense"', "solver.matrix_free=false"])
    problem = build_problem(config)
    op, blocks = build(problem, config.solver, MPI.COMM_SELF, "A")
    A, F, s = op.rows, blocks.F, blocks.mass
    x = sla.solve(A + DELTA * np.diag(np.diag(A)), np.column_stack([F, s]), assume_a="pos")
    u_int, u_sq = target_integrals(problem.domain, problem.target)
    measure = problem.domain.measure
    c0 = float((u_int - s @ x[:, 0]) / (measure - s @ x[:, 1]))
    c = x[:, 0] - c0 * x[:, 1]
    e2 = u_sq - 2 * (c @ F + c0 * u_int) + c @ A @ c + 2 * c0 * (c @ s) + c0**2 * measure
    penalty = DELTA * float(np.diag(A) @ c**2)
    return user_order(c, blocks.tree.perm), c0, float(np.sqrt(e2)), penalty


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_every_back_end_solves_the_ridge_problem(comm, case):
    sets = problem_sets(case) + CASES[case]
    config = load_config(None, sets)
    problem = build_problem(config)
    operator, blocks = build(problem, config.solver, comm, "A")
    before = None if operator.rows is None else operator.rows.copy()
    out = solve_output_weights(problem, blocks, operator, config.solver)
    if before is not None:
        assert np.array_equal(operator.rows, before)
    c_ref, c0_ref, fit_ref, penalty = reference(sets)
    c = user_order(operator.gather(out.c), blocks.tree.perm)
    assert np.linalg.norm(c - c_ref) <= 1e-6 * np.linalg.norm(c_ref)
    assert out.c0 == pytest.approx(c0_ref, rel=1e-5)
    assert out.l2_error == pytest.approx(fit_ref, rel=1e-6)
    assert out.stats["regularization"] == DELTA
    assert out.stats["regularization_term"] == pytest.approx(np.sqrt(penalty), rel=1e-5)


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_regularised_shifts_only_inside_the_block_and_matches_the_entries(comm):
    config = load_config(None, problem_sets("dense") + CASES["dense"])
    problem = build_problem(config)
    operator, _ = build(problem, config.solver, comm, "A")
    start, stop = operator.local_range
    before = operator.rows.copy()
    free = build(problem, replace(config.solver, matrix_free=True), comm, "A")[0]
    expected = before.copy()
    expected[np.arange(stop - start), np.arange(start, stop)] *= 1.0 + DELTA
    with regularised(operator, DELTA) as shifted, regularised(free, DELTA) as shifted_free:
        assert np.array_equal(shifted.rows, expected)
        rows, columns = np.arange(start, stop), np.arange(operator.size)
        assert np.allclose(shifted_free.entries(rows, columns), expected, rtol=1e-12, atol=0)
        x = np.linspace(-1.0, 1.0, stop - start)
        assert np.allclose(shifted_free.matvec(x), shifted.matvec(x), rtol=1e-12)
    assert np.array_equal(operator.rows, before)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("example", ["solve-2d", "train-2d"])
def test_cg_with_the_hss_preconditioner_converges_on_the_2d_examples(example):
    """With the ridge 1e-8, CG + hss PC (tol 1e-4) reaches rtol 1e-10 at n = 1024 and its fit is
    within 1e-3 of LAPACK's unregularised best fit."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{example}.toml"
    sets = ["network.n=1024"]
    krylov = load_config(
        path,
        [
            *sets,
            'solver.kind="krylov"',
            'solver.petsc_options="-distgn_pc_type hss"',
            "solver.regularization=1e-8",
        ],
    )
    dense = load_config(path, [*sets, 'solver.kind="dense"'])
    fits = {}
    for name, config in (("krylov", krylov), ("dense", dense)):
        problem = build_problem(config)
        operator, blocks = build(problem, config.solver, MPI.COMM_WORLD, "A")
        out = solve_output_weights(problem, blocks, operator, config.solver)
        fits[name] = (out.l2_error, out.stats)
    assert fits["krylov"][1]["converged"]
    assert fits["krylov"][1]["iterations"] <= 100
    assert fits["krylov"][0] == pytest.approx(fits["dense"][0], rel=1e-3)
