"""PETSc plumbing shared by the back ends: options, log stages, matrices, python PCs, lifetimes.

Initialisation. petsc4py reads the command line's options when ``petsc4py.PETSc`` is first
imported, so the CLI calls ``distgn.solvers.initialize(options)`` before anything imports this
module; that is why ``distgn.solvers.factor`` imports the back ends (which import PETSc) on first
use rather than at the top of the package.

Lifetimes. A PETSc object that lives on several ranks must be destroyed collectively. petsc4py
leaves such objects alone at garbage collection, and a destroy from ``__del__`` would run at
different moments on different ranks. So every solver that owns PETSc objects is a
``PetscOwner``: it frees them in ``destroy()``, which the caller invokes at a well-defined point on
every rank (``with factor(...) as solver:``), and at exit for whatever is left (before petsc4py
finalizes PETSc), followed by ``PETSc.garbage_cleanup``.

Collective calls: ``operator_matrix``, ``PetscOwner.destroy``, every PC application and every
product of an ``OperatorShell``.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from distgn.errors import InputError, SolverError
from distgn.operator import Operator
from distgn.solvers.base import Disposable, Factorization
from distgn.solvers.traffic import plain

PREFIX = "distgn_"


@contextmanager
def log_stage(name: str) -> Iterator[None]:
    """Run the block inside the PETSc log stage ``name`` (shown by ``-log_view``). Collective."""
    stage = PETSc.Log.Stage(name)
    stage.push()
    try:
        yield
    finally:
        stage.pop()


def petsc_message(exc: PETSc.Error) -> str:
    """PETSc's own message lines of an error (no traceback), joined into one line."""
    lines = [line.split("] ", 1)[-1] for line in str(exc).splitlines()[1:]]
    text = "; ".join(line for line in lines if "() at " not in line)
    return text or f"PETSc error code {exc.ierr}"


def agree_solver(comm: MPI.Comm, error: str | None) -> None:
    """Raise SolverError on every rank if any rank reports ``error``. Collective."""
    first = next((e for e in comm.allgather(error) if e), None)
    if first:
        raise SolverError(first)


# --- matrices -------------------------------------------------------------------------------------


class OperatorShell:
    """MATPYTHON context: PETSc calls ``mult`` for every product (collective on all ranks) and
    ``getDiagonal`` when a PC (jacobi) needs the diagonal."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator

    def mult(self, mat: PETSc.Mat, x: PETSc.Vec, y: PETSc.Vec) -> None:
        """``y = M x`` through ``Operator.matvec``."""
        y.array = self.operator.matvec(x.array_r)

    def getDiagonal(self, mat: PETSc.Mat, d: PETSc.Vec) -> None:  # petsc4py spells it so
        """The diagonal of this rank's rows."""
        d.array = self.operator.diagonal()


def local_block(operator: Operator) -> np.ndarray:
    """This rank's diagonal block ``M[I, I]``, I its rows (a copy). Rank-local."""
    start, stop = operator.local_range
    if operator.rows is not None:
        return operator.rows[:, start:stop].copy()
    index = np.arange(start, stop)
    return operator.entries(index, index)


def operator_matrix(operator: Operator, matrix_free: bool) -> tuple[PETSc.Mat, np.ndarray | None]:
    """The operator as a PETSc matrix, and the array a dense matrix wraps (keep it alive).

    A dense matrix (MATSEQDENSE on one rank without a copy, MATMPIDENSE on a Fortran-order copy of
    the rows otherwise, see the module docstring) when rows are stored and not ``matrix_free``;
    else a MATPYTHON shell around ``Operator.matvec``. Collective.
    """
    m = operator.local_range[1] - operator.local_range[0]
    sizes = ((m, operator.size), (m, operator.size))
    comm = operator.comm
    if matrix_free or operator.rows is None:
        mat = PETSc.Mat().createPython(sizes, OperatorShell(operator), comm=plain(comm))
        mat.setUp()
        return mat, None
    storage = operator.rows.T if comm.size == 1 else np.asfortranarray(operator.rows)
    mat = PETSc.Mat().createDense(sizes, array=storage, comm=plain(comm))
    mat.setOption(PETSc.Mat.Option.SYMMETRIC, True)
    mat.assemble()
    return mat, storage


class FactorizationPC:
    """PC of type python applying ``factorization.solve`` (any distgn Factorization).

    PETSc calls ``apply`` once per Krylov iteration on all ranks at once, with this rank's entries
    of the residual; ``factorization.solve`` may therefore be collective.
    """

    def __init__(self, factorization: Factorization) -> None:
        self.factorization = factorization

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        """``y = F^{-1} x``."""
        y.array = self.factorization.solve(x.array_r)


@contextmanager
def solver_options(petsc_options: str, overrides: dict[str, str]) -> Iterator[PETSc.Options]:
    """The options database with ``petsc_options`` added where the command line is silent.

    ``overrides`` (option name without dash -> value) are set unconditionally. Everything is undone
    on exit. Bad syntax raises InputError. Rank-local (every rank gets the same options).
    """
    db = PETSc.Options()
    before = db.getAll()
    try:
        db.insertString(petsc_options)
    except PETSc.Error as exc:
        raise InputError(
            f"solver.petsc_options = {petsc_options!r}: {petsc_message(exc)}"
        ) from None
    added = set(db.getAll()) - set(before)
    for key, value in before.items():  # the command line wins
        db.setValue(key, value)
    saved = {key: before.get(key) for key in overrides if key in before}
    for key, value in overrides.items():
        db.setValue(key, value)
    try:
        yield db
    finally:
        for key in added | (set(overrides) - set(saved)):
            db.delValue(key)
        for key, value in saved.items():
            db.setValue(key, value)


def option(db: PETSc.Options, name: str, getter: str, default: object) -> object:
    """Read ``-distgn_<name>`` with a one-line InputError for a malformed value."""
    try:
        return getattr(db, getter)(PREFIX + name, default)
    except PETSc.Error as exc:
        raise InputError(f"PETSc option -{PREFIX}{name}: {petsc_message(exc)}") from None


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _destroy_live() -> None:
    """Destroy PETSc objects still owned at exit, before petsc4py finalizes PETSc (atexit runs in
    reverse order of registration): python-type Mat/PC contexts destroyed after PetscFinalize
    crash the interpreter. Collective (every rank holds the same solvers)."""
    for owner in list(_LIVE):
        owner.destroy()
    PETSc.garbage_cleanup()


class PetscOwner(Disposable):
    """Base of the solvers that own PETSc objects; frees them collectively at a defined point.

    ``destroy()`` (or leaving a ``with`` block) frees the objects, last created first, on every
    rank at once. There is deliberately no ``__del__``: the garbage collector runs at different
    moments on different ranks, and a collective destroy from it can deadlock. An owner dropped
    without ``destroy()`` leaves its objects to petsc4py's deferred garbage, freed collectively by
    ``PETSc.garbage_cleanup`` at exit.
    """

    def __init__(self) -> None:
        self._petsc: list = []
        _LIVE.add(self)

    def own(self, obj: PETSc.Object) -> PETSc.Object:
        """Register ``obj`` for destruction and return it."""
        self._petsc.append(obj)
        return obj

    def destroy(self) -> None:
        """Free the PETSc objects now (last created first). Collective."""
        for obj in reversed(self._petsc):
            obj.destroy()
        self._petsc.clear()
        _LIVE.discard(self)
