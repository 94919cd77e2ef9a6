"""The exact reference: LAPACK Cholesky on one rank, ScaLAPACK on 2 and 4 ranks, same answers.

Run serially and under ``mpiexec -n 2`` / ``-n 4``; every rank compares with LAPACK on the
gathered matrix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_krylov import MIXED, gathered, local_rhs, operator_for

from distgn.config import SolverConfig
from distgn.errors import InputError, SolverError
from distgn.solvers import factor

DENSE = SolverConfig(kind="dense")
# n = 67 splits unevenly over 2 and 4 ranks (our layout differs from ScaLAPACK's equal split).
CASES = {"A": ["network.n=67"], "H": MIXED, "G": ["network.n=67"]}


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_matches_lapack(comm, name):
    operator, _ = operator_for(comm, CASES[name], name)
    solver = factor(operator, DENSE)
    f = local_rhs(operator, columns=2)
    x = solver.solve(f)
    stats = solver.stats()
    assert stats["method"] == ("lapack-cholesky" if comm.size == 1 else "scalapack-cholesky")
    M = gathered(operator)
    exact = np.linalg.solve(M, operator.gather(f))
    start, stop = operator.local_range
    assert x.shape == f.shape
    error = np.linalg.norm(x - exact[start:stop]) / np.linalg.norm(exact[start:stop])
    assert error <= 1e-14 * np.linalg.cond(M)
    assert solver.logdet() == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-10)
    assert solver.solve(f[:, 0]).shape == f[:, :1].reshape(-1).shape


@pytest.mark.mpi
def test_cholesky_failure_says_not_positive_definite(comm):
    operator, _ = operator_for(comm, ["network.n=40"], "A")
    start, stop = operator.local_range
    rows = operator.rows.copy()
    rows[np.arange(stop - start), np.arange(start, stop)] -= 1e-3  # indefinite
    with pytest.raises(SolverError, match="not numerically positive definite") as info:
        factor(dataclasses.replace(operator, rows=rows), DENSE)
    assert 'solver.kind = "hss"' in str(info.value)


def test_dense_needs_rows(comm):
    operator, _ = operator_for(comm, ["network.n=16"], "H", matrix_free=True)
    with pytest.raises(InputError, match="matrix_free"):
        factor(operator, DENSE)
