"""Krylov solvers (PETSc KSP) for the distgn operators, with structured preconditioners.

``solver.kind = "krylov"``: ``factor(operator, config)`` sets up a PETSc KSP on the operator and
returns a ``KrylovSolver`` (``solve``, ``stats``; ``logdet`` raises). Everything is configured
through the PETSc options database under the prefix ``distgn_``, with this precedence (highest
first): the command line (``petsc4py.init(sys.argv)`` is done by the CLI), ``[solver]
petsc_options`` of the config, then the shorthands ``solver.rtol`` and ``solver.max_iter`` and the
defaults below. Config options are in the database only while distgn sets up or runs the solver, so
two solvers in one process never see each other's options.

=====================================  ==========================================================
option                                 meaning (default)
=====================================  ==========================================================
``-distgn_ksp_type``                   any PETSc KSP type; meant for ``cg`` (default), ``minres``,
                                       ``pipecg``
``-distgn_pc_type``                    ``none`` (default), ``jacobi``, ``bjacobi``, ``hat``, ``hss``
``-distgn_pc_hss_tol``                 tolerance of the hss preconditioner (1e-4)
``-distgn_ksp_rtol``, ``_max_it``      override ``solver.rtol`` and ``solver.max_iter``
``-distgn_ksp_norm_type``              ``unpreconditioned`` (the true residual) by default where
                                       the method supports it (cg, pipecg); MINRES in PETSc 3.18
                                       only has the preconditioned norm
``-distgn_ksp_monitor`` etc.           any other KSP option, as usual
=====================================  ==========================================================

Preconditioners. ``jacobi`` is PETSc's. ``bjacobi`` is distgn's: one dense LAPACK Cholesky of each
rank's diagonal block (PETSc's ``-distgn_sub_*`` options do not apply), with a collective error if a
block is not numerically positive definite. ``hat`` is the O(n) 1D solve through the
piecewise-polynomial basis (``HatSolver``, the ReLU -> hat transform of docs/math.md generalised to
H, G and to any orientations): exact in exact arithmetic, so PCG needs one or two iterations
whatever n as long as the matrix is numerically positive definite; rounding grows with random
breakpoints (cell lengths down to ~1/n^2) and mixed orientations (benchmarks/krylov.md). It is 1D
only. On the 1D value-coordinate system (``Operator.system``, every 1D solve with A by default)
``hat`` is that system's exact O(n) inverse. ``hss`` is ``distgn.solvers.hss.factor`` at a loose
tolerance. ``FactorizationPC`` turns any distgn factorization (any object with ``solve``) into a
PETSc PC of type python.

Matrices. With stored block rows the operator becomes a PETSc dense matrix. PETSc dense storage is
column-major and our block rows are C-order (m, N): on one rank that buffer is the column-major
storage of the transpose, i.e. of the same symmetric matrix, and is wrapped without a copy; on
P > 1 ranks a MATMPIDENSE needs column-major (m, N) local rows, which C-order rows are not, so the
rows are copied once into Fortran order (the memory of the block rows doubles). ``solver.
matrix_free = true`` (or an operator without rows) gives a MATPYTHON shell around
``Operator.matvec``, which never copies: it uses the stored rows, the 1D fast product, or exact
entries tile by tile, so Krylov runs at n beyond dense memory.

Outcome. A solve that stops without converging raises ``NotConvergedError`` (a ConvergenceError)
naming the KSP converged reason as PETSc prints it (e.g. ``DIVERGED_ITS``,
``DIVERGED_INDEFINITE_MAT``); the CLI exits with status 3 for it. A solve whose recursively updated
residual met rtol but whose true residual ``||b - M x|| / ||b||`` (computed after every solve) is
above ``RESIDUAL_GAP`` * rtol has stagnated at the attainable accuracy (cond(M) too large for rtol)
and is reported the same way. ``stats()`` still describes that solve (``converged`` false).

PETSc log stages ``distgn: setup`` and ``distgn: solve`` (``log_stage``) make ``-log_view`` show
the phases. Collective calls: ``factor``, ``KrylovSolver.solve/stats``, ``HatSolver`` and
``BlockCholesky`` construction, ``HatSolver.solve``, ``operator_matrix``; every PC application.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.linalg as sla
from mpi4py import MPI
from petsc4py import PETSc

from distgn.config import SolverConfig
from distgn.errors import ConvergenceError, InputError, SolverError
from distgn.operator import Operator
from distgn.solvers.base import Disposable, Factorization
from distgn.solvers.hat import HatSolver
from distgn.solvers.hss import factor as factor_hss
from distgn.solvers.petsc import (
    PREFIX,
    FactorizationPC,
    PetscOwner,
    agree_solver,
    local_block,
    log_stage,
    operator_matrix,
    option,
    petsc_message,
    solver_options,
)
from distgn.solvers.traffic import plain

KSP_DEFAULT = "cg"
PC_TYPES = ("none", "jacobi", "bjacobi", "hat", "hss")
HSS_PC_TOL = 1e-4
RESIDUAL_GAP = 100.0

# petsc4py spells two reasons differently from PETSc's own -ksp_converged_reason output.
_REASON_NAMES = {
    int(value): name
    for name, value in vars(PETSc.KSP.ConvergedReason).items()
    if name.isupper() and name != "ITERATING"
}
_REASON_NAMES.update(
    {
        int(PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT): "DIVERGED_ITS",
        int(PETSc.KSP.ConvergedReason.DIVERGED_PCSETUP_FAILED): "DIVERGED_PC_FAILED",
    }
)
_KSP_TYPES = frozenset(value for name, value in vars(PETSc.KSP.Type).items() if name.isupper())
_ERR_SUP = 56


class NotConvergedError(ConvergenceError):
    """A Krylov solve stopped without converging (the CLI exits with status 3).

    ``solution`` holds the last iterate (this rank's rows), for diagnostics only.
    """

    def __init__(self, message: str, solution: np.ndarray) -> None:
        super().__init__(message)
        self.solution = solution


class BlockCholesky(Disposable):
    """Block Jacobi: a dense LAPACK Cholesky of each rank's diagonal block of the operator.

    Construction is collective (the ranks agree on failure); ``solve`` is rank-local.
    """

    def __init__(self, operator: Operator) -> None:
        self.size = operator.local_range[1] - operator.local_range[0]
        error = None
        try:
            self.factor = sla.cho_factor(local_block(operator), lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            error = (
                f"bjacobi: the diagonal block of rank {operator.comm.rank} of {operator.name} "
                f"is not numerically positive definite; {exc}; try -distgn_pc_type hss"
            )
        agree_solver(operator.comm, error)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve with this rank's diagonal block."""
        return sla.cho_solve(self.factor, rhs, check_finite=False)

    def logdet(self) -> float:
        """Not available: a preconditioner is not a factorization of the matrix."""
        raise SolverError("the bjacobi preconditioner has no log-determinant of the matrix")

    def stats(self) -> dict:
        """Block size of this rank."""
        return {"type": "bjacobi", "block_rows": self.size, "factor_bytes": self.factor[0].nbytes}


def preconditioner(
    pc_type: str, operator: Operator, config: SolverConfig, hss_tol: float
) -> Factorization | None:
    """The distgn factorization behind a python PC type, None for PETSc's own. Collective."""
    if pc_type == "bjacobi":
        return BlockCholesky(operator)
    if pc_type == "hat":
        return HatSolver(operator)
    if pc_type == "hss":
        return factor_hss(operator, dataclasses.replace(config, kind="hss", tol=hss_tol))
    return None


class KrylovSolver(PetscOwner):
    """A configured KSP on an operator; ``solve`` runs it. See ``factor``."""

    def __init__(self, operator: Operator, config: SolverConfig) -> None:
        super().__init__()
        self.operator, self.config = operator, config
        self.last: dict = {}
        start = time.perf_counter()
        with log_stage("distgn: setup"), solver_options(config.petsc_options, {}) as db:
            ksp_type = option(db, "ksp_type", "getString", KSP_DEFAULT)
            pc_type = option(db, "pc_type", "getString", "none")
            hss_tol = option(db, "pc_hss_tol", "getReal", HSS_PC_TOL)
            if ksp_type not in _KSP_TYPES:
                raise InputError(
                    f"PETSc option -{PREFIX}ksp_type {ksp_type!r} is not a KSP type "
                    f"(distgn uses cg, minres or pipecg)"
                )
            if pc_type not in PC_TYPES:
                raise InputError(
                    f"PETSc option -{PREFIX}pc_type {pc_type!r} is not one of {', '.join(PC_TYPES)}"
                )
            if not hss_tol > 0:
                raise InputError(f"PETSc option -{PREFIX}pc_hss_tol {hss_tol!r} must be positive")
            self.pc_factorization = preconditioner(pc_type, operator, config, hss_tol)
            self.mat, self._storage = operator_matrix(operator, config.matrix_free)
            self.own(self.mat)
            self._configure(ksp_type, pc_type, db)
            self._x, self._b = (self.own(v) for v in self.mat.createVecs())
        self.ksp_type, self.pc_type = self.ksp.getType(), pc_type
        self.seconds_factor = operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)

    def _configure(self, ksp_type: str, pc_type: str, db: PETSc.Options) -> None:
        """KSP with defaults, then the options database, then distgn's python PC. Collective."""
        ksp = self.ksp = self.own(PETSc.KSP().create(plain(self.operator.comm)))
        ksp.setOptionsPrefix(PREFIX)
        ksp.setOperators(self.mat)
        ksp.setType(ksp_type)
        ksp.setTolerances(rtol=self.config.rtol, max_it=self.config.max_iter)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.getPC().setType(pc_type if self.pc_factorization is None else "none")
        with solver_options("", {PREFIX + "pc_type": ksp.getPC().getType()}):
            try:
                ksp.setFromOptions()
            except PETSc.Error as exc:
                raise InputError(f"PETSc options under -{PREFIX}: {petsc_message(exc)}") from None
        if self.pc_factorization is not None:
            ksp.getPC().setType(PETSc.PC.Type.PYTHON)
            ksp.getPC().setPythonContext(FactorizationPC(self.pc_factorization))
        ksp.setConvergenceHistory(reset=True)
        try:
            ksp.setUp()
        except PETSc.Error as exc:
            if exc.ierr != _ERR_SUP or db.hasName(PREFIX + "ksp_norm_type"):
                raise SolverError(f"KSP setup failed: {petsc_message(exc)}") from None
            ksp.setNormType(PETSc.KSP.NormType.DEFAULT)  # e.g. MINRES: preconditioned norm only
            ksp.setUp()

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows for local right-hand-side rows (m,) or (m, k), column by column.

        Collective. Raises NotConvergedError (reason by name) if any column did not converge.
        """
        rhs = np.asarray(rhs, dtype=float)
        columns = rhs.reshape(rhs.shape[0], -1)
        out = np.empty_like(columns)
        x, b = self._x, self._b
        runs = []
        start = time.perf_counter()
        with log_stage("distgn: solve"), solver_options(self.config.petsc_options, {}):
            for j in range(columns.shape[1]):
                b.array = columns[:, j]
                x.set(0.0)
                self.ksp.solve(b, x)
                out[:, j] = x.array_r
                runs.append(
                    (
                        int(self.ksp.getConvergedReason()),
                        self.ksp.getIterationNumber(),
                        [float(r) for r in self.ksp.getConvergenceHistory()],
                    )
                )
        seconds = self.operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        failed = [run for run in runs if run[0] < 0]
        reason, iterations, history = failed[0] if failed else max(runs, key=lambda run: run[1])
        residual = self.operator.matvec(out) - columns
        norms = np.sqrt(
            self.operator.comm.allreduce(np.array([np.sum(residual**2), np.sum(columns**2)]))
        )
        relative = float(norms[0] / norms[1]) if norms[1] > 0 else float(norms[0])
        rtol = self.ksp.getTolerances()[0]
        stagnated = not failed and relative > RESIDUAL_GAP * rtol
        self.last = {
            "converged": not (failed or stagnated),
            "iterations": iterations,
            "converged_reason": _REASON_NAMES[reason],
            "residual_history": history,
            "columns": columns.shape[1],
            "true_relative_residual": relative,
            "seconds": seconds,
        }
        if failed or stagnated:
            what = (
                "did not converge"
                if failed
                else f"stagnated: the recursively updated residual met rtol but the true residual "
                f"is above {RESIDUAL_GAP:g} rtol ({rtol:g})"
            )
            raise NotConvergedError(
                f"Krylov solve ({self.ksp_type}, pc {self.pc_type}) of {self.operator.name} "
                f"{what}: {_REASON_NAMES[reason]} after {iterations} iterations, "
                f"||b - M x|| / ||b|| = {relative:.2e}",
                out.reshape(rhs.shape),
            )
        return out.reshape(rhs.shape)

    def logdet(self) -> float:
        """Not available from a Krylov solve: raises SolverError (use kind "dense" or "hss")."""
        raise SolverError(
            'solver.kind = "krylov" has no log-determinant; use solver.kind = "dense" or "hss"'
        )

    def stats(self) -> dict:
        """Method, PC, norm, tolerances, setup time and the last solve's outcome. Collective."""
        rtol, _, _, max_it = self.ksp.getTolerances()
        norm = {int(v): k for k, v in vars(PETSc.KSP.NormType).items() if k.isupper()}
        pc_stats = self.pc_factorization.stats() if self.pc_factorization is not None else {}
        factor_bytes = pc_stats.get("factor_bytes", 0)
        last = {key: value for key, value in self.last.items() if key != "seconds"}
        return {
            "kind": "krylov",
            "seconds_factor": self.seconds_factor,
            "seconds_solve": self.last.get("seconds", 0.0),
            "factor_bytes": self.operator.comm.allreduce(factor_bytes, op=MPI.MAX),
            "ksp_type": self.ksp_type,
            "pc_type": self.pc_type,
            "norm_type": norm[int(self.ksp.getNormType())].lower(),
            "rtol": rtol,
            "max_iter": max_it,
            "mat_type": self.mat.getType(),
            "pc_stats": pc_stats,
            **last,
        }


def factor(operator: Operator, config: SolverConfig) -> KrylovSolver:
    """Set up a PETSc Krylov solver for ``operator`` from ``config`` and the options database.

    Collective. Raises InputError for bad options (one line naming the value) and SolverError when
    a preconditioner cannot be built.
    """
    if not 0.0 < config.rtol < 1.0:
        raise InputError(f"config key solver.rtol = {config.rtol!r} must be in (0, 1)")
    if config.max_iter < 1:
        raise InputError(f"config key solver.max_iter = {config.max_iter!r} must be at least 1")
    return KrylovSolver(operator, config)
