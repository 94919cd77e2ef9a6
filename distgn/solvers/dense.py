"""The exact reference solver, ``solver.kind = "dense"``: dense Cholesky of the stored block rows.

One rank: LAPACK Cholesky (``scipy.linalg.cho_factor``) of the rows, which are the whole matrix.
P ranks: PETSc's MATSCALAPACK Cholesky (``-pc_type cholesky -pc_factor_mat_solver_type
scalapack``): the block rows become a MATMPIDENSE (``distgn.solvers.petsc.operator_matrix``),
which is converted to ScaLAPACK's 2D block-cyclic layout and factored with ``pdpotrf``; PETSc has
no Cholesky for MATMPIDENSE itself. Memory: the block rows, plus one copy of them (P > 1), plus
the factor. ``logdet`` comes from the diagonal of the Cholesky factor in both cases.

When Cholesky meets a non-positive pivot (the matrix is not numerically positive definite, i.e.
cond > ~1/eps) a SolverError says so and suggests the hierarchical solver. The ScaLAPACK
right-hand sides are moved between our block-row layout and PETSc's equal split by gathering the
vector (O(N) words, negligible next to the O(N^2 / P) factor). All methods are collective.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg as sla
from mpi4py import MPI
from petsc4py import PETSc

from distgn.config import SolverConfig
from distgn.errors import InputError, SolverError
from distgn.operator import Operator
from distgn.solvers.petsc import PetscOwner, log_stage, operator_matrix, petsc_message
from distgn.solvers.traffic import plain


def not_positive_definite(operator: Operator, detail: str) -> SolverError:
    """The error for a failed Cholesky factorization of ``operator``."""
    return SolverError(
        f"Cholesky failed: {operator.name} (N = {operator.size}) is not numerically positive "
        f'definite; cond({operator.name}) > 1/eps? ({detail}); try solver.kind = "hss"'
    )


class DenseCholesky(PetscOwner):
    """Cholesky factorization of the whole operator: LAPACK on one rank, ScaLAPACK on several."""

    def __init__(self, operator: Operator) -> None:
        super().__init__()
        if operator.rows is None:
            raise InputError(
                'solver.kind = "dense" needs stored block rows; set solver.matrix_free = false'
            )
        self.operator = operator
        self.seconds_solve = 0.0
        # The factor's storage on this rank: the whole matrix (LAPACK), this rank's share of
        # the block-cyclic factor (ScaLAPACK), about the size of its block rows.
        self.factor_bytes = operator.rows.nbytes
        start = time.perf_counter()
        with log_stage("distgn: setup"):
            if operator.comm.size == 1:
                self._factor_lapack()
            else:
                self._factor_scalapack()
        self.seconds_factor = operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)

    def _factor_lapack(self) -> None:
        """``cho_factor`` of the rows (the whole matrix on one rank)."""
        self.method = "lapack-cholesky"
        try:
            self.lapack = sla.cho_factor(self.operator.rows, lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise not_positive_definite(self.operator, str(exc)) from None

    def _factor_scalapack(self) -> None:
        """MATMPIDENSE -> MATSCALAPACK -> PCCHOLESKY with the scalapack solver. Collective."""
        self.method = "scalapack-cholesky"
        self.matrix, storage = operator_matrix(self.operator, matrix_free=False)
        self.own(self.matrix).convert("scalapack")  # in place: the MATMPIDENSE header is replaced
        del storage  # the Fortran-order copy of the rows that the MATMPIDENSE wrapped
        self.pc = self.own(PETSc.PC().create(plain(self.operator.comm)))
        self.pc.setOperators(self.matrix)
        self.pc.setType(PETSc.PC.Type.CHOLESKY)
        self.pc.setFactorSolverType("scalapack")
        try:
            self.pc.setUp()
        except PETSc.Error as exc:  # pdpotrf's info is global: every rank raises
            raise not_positive_definite(self.operator, petsc_message(exc)) from None
        self.offsets = np.array(self.matrix.getOwnershipRanges())
        self._b, self._x = (self.own(v) for v in self.matrix.createVecs())

    def _relayout(self, x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """This rank's rows of a vector (N, k) distributed by ``source`` offsets, redistributed by
        ``target`` offsets (by gathering it). Collective."""
        comm = self.operator.comm
        k = x.shape[1]
        full = np.empty((self.operator.size, k))
        comm.Allgatherv(
            np.ascontiguousarray(x), [full, np.diff(source) * k, source[:-1] * k, MPI.DOUBLE]
        )
        return full[target[comm.rank] : target[comm.rank + 1]]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective."""
        rhs = np.asarray(rhs, dtype=float)
        columns = rhs.reshape(rhs.shape[0], -1)
        start = time.perf_counter()
        with log_stage("distgn: solve"):
            if self.operator.comm.size == 1:
                out = sla.cho_solve(self.lapack, columns, check_finite=False)
            else:
                out = self._solve_scalapack(columns)
        self.seconds_solve = self.operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        return out.reshape(rhs.shape)

    def _solve_scalapack(self, columns: np.ndarray) -> np.ndarray:
        """Column by column through the ScaLAPACK factor. Collective."""
        ours = self.operator.offsets()
        b, x = self._b, self._x
        local = self._relayout(columns, ours, self.offsets)
        out = np.empty_like(local)
        for j in range(local.shape[1]):
            b.array = local[:, j]
            self.pc.apply(b, x)
            out[:, j] = x.array_r
        return self._relayout(out, self.offsets, ours)

    def logdet(self) -> float:
        """``log det M = 2 sum log diag(L)`` from the Cholesky factor. Collective."""
        if self.operator.comm.size == 1:
            return float(2.0 * np.sum(np.log(np.diag(self.lapack[0]))))
        self.pc.getFactorMatrix().getDiagonal(self._x)  # the factor's layout is the matrix's
        return float(2.0 * self.operator.comm.allreduce(np.sum(np.log(self._x.array_r))))

    def stats(self) -> dict:
        """Method, size and timings. Collective."""
        return {
            "kind": "dense",
            "seconds_factor": self.seconds_factor,
            "seconds_solve": self.seconds_solve,
            "factor_bytes": self.operator.comm.allreduce(self.factor_bytes, op=MPI.MAX),
            "method": self.method,
            "size": self.operator.size,
            "ranks": self.operator.comm.size,
        }


def factor(operator: Operator, config: SolverConfig) -> DenseCholesky:
    """Dense Cholesky of ``operator`` (``config`` is not used: the reference has no knobs).

    Collective. Raises SolverError when the matrix is not numerically positive definite.
    """
    return DenseCholesky(operator)
