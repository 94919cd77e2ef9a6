"""The distributed HSS solver on 1, 2, 3 and 4 ranks: backward errors and agreement with one rank.

Run serially and under ``mpiexec -n 2, 3, 4``; every rank owns its block rows (or none:
matrix-free) and only skeleton-sized data moves between ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from mpi4py import MPI
from test_hss import BOX, make_operator

from distgn.assembly import pair_integrals
from distgn.solvers import backward_error
from distgn.solvers.hss import factor

COMM = MPI.COMM_WORLD


def local_rows(op, full: np.ndarray) -> np.ndarray:
    """This rank's rows of a replicated array."""
    start, stop = op.local_range
    return full[start:stop]


def solve_backward_error(op, solver, columns: int = 2) -> tuple[float, dict]:
    """Largest backward error over consistent right-hand sides ``f = M x0`` (x0 random), and the
    factorization statistics; checks that the solutions stay of the size of x0.

    A random f would make ||x|| astronomically large for these condition numbers, and with it
    the backward error meaninglessly small.
    """
    fact = factor(op, solver)
    x0 = local_rows(op, np.random.default_rng(7).standard_normal((op.size, columns)))
    f = op.matvec(x0)
    x = fact.solve(f)
    sizes = op.comm.allreduce(np.array([np.sum(x * x), np.sum(x0 * x0)]))
    assert np.sqrt(sizes[0]) <= 100 * np.sqrt(sizes[1])
    norm = op.norm_estimate()
    return max(backward_error(op, x[:, j], f[:, j], norm) for j in range(columns)), fact.stats()


@pytest.mark.mpi
@pytest.mark.parametrize(
    "sets, name",
    [
        (["network.n=2048", "network.init=random"], "A"),
        (["network.n=2048", "network.init=random", "network.orientation=random"], "A"),
        (["network.n=8192", "network.init=uniform", "solver.matrix_free=true"], "A"),
        (["network.n=2048", "network.init=uniform"], "H"),
        (["network.n=1024", "network.init=random", "network.orientation=random"], "H"),
        (["network.n=1024", "network.init=random", "network.orientation=alternating"], "G"),
        (["network.n=512", "network.init=random"] + BOX, "A"),
    ],
)
def test_backward_error_at_tight_tolerance(sets: list[str], name: str) -> None:
    op, solver = make_operator(sets + ["solver.tol=1e-12"], name, COMM)
    error, stats = solve_backward_error(op, solver)
    assert error <= 1e-12
    assert stats["scheme"] == "skeleton"
    if op.domain.dim == 1:
        assert stats["max_rank"] <= 6 * op.block


@pytest.mark.mpi
def test_dense_cholesky_fails_where_hss_does_not() -> None:
    """1D A with random breakpoints, n = 2048: cond(A) > 1e16 and LAPACK's Cholesky breaks down."""
    op, solver = make_operator(
        ["network.n=2048", "network.init=random", "solver.tol=1e-12"], "A", COMM
    )
    full = np.arange(op.tree.n)
    A = pair_integrals(op.domain, op.W, op.b, full, full, ("A",))["A"]
    with pytest.raises(np.linalg.LinAlgError):
        sla.cholesky(A)
    error, _ = solve_backward_error(op, solver)
    assert error <= 1e-12


@pytest.mark.mpi
@pytest.mark.parametrize(
    "sets, name, tol",
    [
        (["network.n=1024", "network.init=uniform"], "H", 1e-12),
        (["network.n=300", "network.init=random", "solver.leaf_size=32"] + BOX, "A", 1e-2),
    ],
)
def test_ranks_agree_with_one_rank(sets: list[str], name: str, tol: float) -> None:
    sets = sets + [f"solver.tol={tol}"]
    op, solver = make_operator(sets, name, COMM)
    one, _ = make_operator(sets, name, MPI.COMM_SELF)
    f = np.random.default_rng(8).standard_normal((op.size, 3))
    fact, serial = factor(op, solver), factor(one, solver)
    x = op.gather(fact.solve(local_rows(op, f)))
    y = serial.solve(f)
    if tol == 1e-12:
        assert np.linalg.norm(x - y) <= 1e-8 * np.linalg.norm(y)
        assert fact.logdet() == pytest.approx(serial.logdet(), rel=1e-10)
    else:
        # Loose tolerance: different trees (P = 3) give different preconditioners, all SPD.
        assert fact.stats()["scheme"] == "schur"
        assert fact.stats()["shifted_blocks"] == 0
        assert np.all(np.einsum("ik,ik->k", f, x) > 0)
        assert np.isfinite(fact.logdet())
        if COMM.size in (1, 2, 4):
            assert np.linalg.norm(x - y) <= 1e-8 * np.linalg.norm(y)


@pytest.mark.mpi
def test_bytes_sent_are_skeleton_sized() -> None:
    """Bytes sent above the rank level do not depend on n (1D, interpolative skeletons)."""
    sent = []
    for n in (2048, 8192):
        op, solver = make_operator(
            [
                f"network.n={n}",
                "network.init=uniform",
                "solver.matrix_free=true",
                "solver.sample_size=32",
            ],
            "A",
            COMM,
        )
        sent.append(factor(op, solver).stats()["bytes_sent_per_level"])
    top = max(1, int(np.ceil(np.log2(COMM.size))))
    assert sent[0][:top] == sent[1][:top]
    assert all(b == 0 for b in sent[0][top:])
    assert (sum(sent[0]) > 0) == (COMM.size > 1)


class OperatorContext:
    """PETSc python Mat applying the operator (its ``mult`` is collective)."""

    def __init__(self, op) -> None:
        self.op = op

    def mult(self, mat, x, y) -> None:
        y.array[:] = self.op.matvec(x.getArray(readonly=True))


@pytest.mark.mpi
def test_petsc_cg_with_hss_preconditioner() -> None:
    """The factorization as a PETSc PC of type python (distgn.solvers.petsc's adapter)."""
    from petsc4py import PETSc

    from distgn.solvers import petsc

    op, solver = make_operator(
        ["network.n=400", "network.init=random", "solver.leaf_size=32", "solver.tol=1e-4"] + BOX,
        "A",
        COMM,
    )
    m = op.local_range[1] - op.local_range[0]
    mat = PETSc.Mat().createPython(((m, op.size), (m, op.size)), OperatorContext(op), comm=COMM)
    mat.setUp()
    ksp = PETSc.KSP().create(comm=COMM)
    ksp.setOperators(mat)
    ksp.setType("cg")
    pc = ksp.getPC()
    pc.setType(PETSc.PC.Type.PYTHON)
    pc.setPythonContext(petsc.FactorizationPC(factor(op, solver)))
    ksp.setTolerances(rtol=1e-10, max_it=200)
    b, x = mat.createVecs()
    b.array[:] = local_rows(op, np.random.default_rng(9).standard_normal(op.size))
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < 60  # 27 measured on one rank
    norm = op.norm_estimate()
    assert backward_error(op, x.getArray(), b.getArray(), norm) < 1e-9
