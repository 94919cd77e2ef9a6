"""Serial checks of the HSS solver: node kernels, dense comparisons, SPD at loose tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from mpi4py import MPI

from distgn.config import load_config
from distgn.errors import InputError
from distgn.operator import Operator, build
from distgn.problem import build_problem
from distgn.solvers.hss import HSSFactorization, factor
from distgn.solvers.hss.compress import range_basis, row_id
from distgn.solvers.hss.ulv import spd_sqrt

BOX = ["domain.kind=box", "domain.bounds=[[0,1],[0,1]]"]


def make_operator(
    sets: list[str], name: str = "A", comm: MPI.Comm = MPI.COMM_SELF
) -> tuple[Operator, object]:
    """The neuron-basis operator (``solver.basis = "relu"``) and solver settings of a configuration
    given as ``section.key=value``."""
    config = load_config(None, sets + ['solver.basis="relu"'])
    return build(build_problem(config), config.solver, comm, name)[0], config.solver


def dense_inverse(fact: HSSFactorization) -> np.ndarray:
    """The approximate inverse as a dense matrix (one rank, small n)."""
    return fact.solve(np.eye(fact.operator.size))


def test_spd_sqrt_cholesky_and_floor() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 20))
    D = X @ X.T
    L, logdet, shift = spd_sqrt(D)
    assert shift == 0 and np.allclose(L @ L.T, D) and np.isclose(logdet, np.linalg.slogdet(D)[1])
    V = np.linalg.qr(X)[0]
    D = V @ np.diag(np.r_[-1e-3, 1e-20, np.ones(18)]) @ V.T
    L, logdet, shift = spd_sqrt(D)
    assert shift > 0 and np.all(np.diag(L) > 0) and np.isfinite(logdet)
    assert np.linalg.norm(L @ L.T - D, 2) < 8.1e-3


def test_row_id_and_range_basis_recover_low_rank() -> None:
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 30))
    J, U = row_id(Z, 1e-10 * np.linalg.norm(Z))
    assert J.size == 5 and np.allclose(U @ Z[J], Z, atol=1e-10 * np.abs(Z).max())
    Q = range_basis(Z, 1e-12)
    assert Q.shape == (40, 5) and np.allclose(Q @ (Q.T @ Z), Z)


@pytest.mark.parametrize(
    "sets, name",
    [
        (["network.n=200", "network.init=uniform"], "H"),
        (["network.n=64", "network.init=uniform"], "A"),
        (["network.n=24", "network.init=uniform"], "G"),
    ],
)
def test_matches_dense_lapack_and_logdet(sets: list[str], name: str) -> None:
    op, solver = make_operator(sets + ["solver.leaf_size=8", "solver.tol=1e-12"], name)
    M = op.rows
    cond = np.linalg.cond(M)
    assert cond < 1e9
    fact = factor(op, solver)
    f = np.random.default_rng(2).standard_normal((op.size, 3))
    x, x_dense = fact.solve(f), sla.cho_solve(sla.cho_factor(M), f)
    assert np.linalg.norm(x - x_dense) <= 1e-14 * cond * np.linalg.norm(x_dense)
    assert abs(fact.logdet() - np.linalg.slogdet(M)[1]) <= 1e-9 * abs(np.linalg.slogdet(M)[1])
    assert fact.stats()["max_rank"] < 8


def test_reconstruction_error_follows_tolerance() -> None:
    op, solver = make_operator(
        ["network.n=256", "network.init=uniform", "solver.leaf_size=16"], "H"
    )
    for tol in (1e-4, 1e-8, 1e-12):
        approx = np.linalg.inv(
            dense_inverse(
                factor(op, load_config(None, [f"solver.tol={tol}", "solver.leaf_size=16"]).solver)
            )
        )
        assert np.linalg.norm(approx - op.rows, 2) <= 10 * tol * np.linalg.norm(op.rows, 2)


@pytest.mark.parametrize("compensation", ["schur", "none"])
@pytest.mark.parametrize(
    "sets",
    [
        ["network.n=256", "network.init=uniform"],
        ["network.n=300", "network.init=random"] + BOX,
    ],
)
def test_spd_at_loose_tolerance(sets: list[str], compensation: str) -> None:
    op, solver = make_operator(
        sets + ["solver.leaf_size=32", "solver.tol=1e-2", f"solver.compensation={compensation}"]
    )
    fact = factor(op, solver)
    if compensation == "schur":
        # The approximation itself is SPD (no eigenvalue was floored), so its inverse, formed
        # densely, is symmetric with a Cholesky factor.
        assert fact.stats()["shifted_blocks"] == 0
        inverse = dense_inverse(fact)
        assert np.allclose(inverse, inverse.T, rtol=1e-8, atol=1e-8 * np.abs(inverse).max())
        np.linalg.cholesky(0.5 * (inverse + inverse.T))
    # Skeletons: F F^T with floored node factors, SPD by construction.
    x = np.random.default_rng(3).standard_normal((op.size, 20))
    assert np.all(np.einsum("ik,ik->k", x, fact.solve(x)) > 0)
    assert np.isfinite(fact.logdet())


def test_schur_compensation_is_a_good_preconditioner() -> None:
    op, solver = make_operator(
        ["network.n=300", "network.init=random", "solver.leaf_size=32", "solver.tol=1e-2"] + BOX
    )
    fact = factor(op, solver)
    assert fact.stats()["scheme"] == "schur"
    C = np.linalg.cholesky(dense_inverse(fact))
    spectrum = np.linalg.eigvalsh(C.T @ op.rows @ C)
    assert spectrum[0] > 0
    assert spectrum[-1] / spectrum[0] < 1e-4 * np.linalg.cond(op.rows)


def test_matrix_free_agrees_with_block_rows() -> None:
    sets = ["network.n=3000", "network.init=uniform", "solver.tol=1e-12"]
    rows, solver = make_operator(sets)
    free, free_solver = make_operator(sets + ["solver.matrix_free=true"])
    f = np.random.default_rng(4).standard_normal(rows.size)
    x, y = factor(rows, solver).solve(f), factor(free, free_solver).solve(f)
    residual = np.linalg.norm(rows.matvec(x - y))
    assert residual <= 1e-12 * rows.norm_estimate() * np.linalg.norm(x)


def test_compensation_needs_block_rows() -> None:
    op, solver = make_operator(
        ["network.n=100", "solver.matrix_free=true", "solver.compensation=schur", "solver.tol=1e-2"]
    )
    with pytest.raises(InputError, match="stored block rows"):
        factor(op, solver)
    op, solver = make_operator(["network.n=100", "solver.compensation=always"])
    with pytest.raises(InputError, match="solver.compensation"):
        factor(op, solver)
