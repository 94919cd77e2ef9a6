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
piecewise-polynomial basis (``HatSolver``, the ReLU -> hat transform of MATH.md generalised to H, G
and to any orientations): exact in exact arithmetic, so PCG needs one or two iterations whatever n
as long as the matrix is numerically positive definite; rounding grows with random breakpoints
(cell lengths down to ~1/n^2) and mixed orientations (benchmarks/krylov.md). It is 1D only.
``hss`` is ``distgn.hss.factor`` at a loose tolerance. ``FactorizationPC`` turns any distgn
factorization (any object with ``solve``) into a PETSc PC of type python.

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

import atexit
import dataclasses
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from mpi4py import MPI
from petsc4py import PETSc

from distgn.config import SolverConfig
from distgn.errors import ConvergenceError, InputError, SolverError
from distgn.operator import Operator
from distgn.solvers import Factorization

PREFIX = "distgn_"
KSP_DEFAULT = "cg"
PC_TYPES = ("none", "jacobi", "bjacobi", "hat", "hss")
HSS_PC_TOL = 1e-4
DIAGONAL_TILE = 256
RESIDUAL_GAP = 100.0

# petsc4py spells two reasons differently from PETSc's own -ksp_converged_reason output.
_REASON_NAMES = {int(value): name for name, value in vars(PETSc.KSP.ConvergedReason).items()
                 if name.isupper() and name != "ITERATING"}
_REASON_NAMES.update({int(PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT): "DIVERGED_ITS",
                      int(PETSc.KSP.ConvergedReason.DIVERGED_PCSETUP_FAILED): "DIVERGED_PC_FAILED"})
_KSP_TYPES = frozenset(value for name, value in vars(PETSc.KSP.Type).items() if name.isupper())
_ERR_SUP = 56


class NotConvergedError(ConvergenceError):
    """A Krylov solve stopped without converging (the CLI exits with status 3).

    ``solution`` holds the last iterate (this rank's rows), for diagnostics only.
    """

    def __init__(self, message: str, solution: np.ndarray) -> None:
        super().__init__(message)
        self.solution = solution


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
        d.array = local_diagonal(self.operator)


def local_diagonal(operator: Operator) -> np.ndarray:
    """Diagonal entries of this rank's rows (from the rows, else exact entries by tiles). Local."""
    start, stop = operator.local_range
    if operator.rows is not None:
        return operator.rows[np.arange(stop - start), np.arange(start, stop)].copy()
    tiles = [np.arange(lo, min(lo + DIAGONAL_TILE, stop))
             for lo in range(start, stop, DIAGONAL_TILE)]
    return np.concatenate([np.diag(operator.entries(I, I)) for I in tiles])


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
        mat = PETSc.Mat().createPython(sizes, OperatorShell(operator), comm=comm)
        mat.setUp()
        return mat, None
    storage = operator.rows.T if comm.size == 1 else np.asfortranarray(operator.rows)
    mat = PETSc.Mat().createDense(sizes, array=storage, comm=comm)
    mat.setOption(PETSc.Mat.Option.SYMMETRIC, True)
    mat.assemble()
    return mat, storage


# --- preconditioners ------------------------------------------------------------------------------


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


class BlockCholesky:
    """Block Jacobi: a dense LAPACK Cholesky of each rank's diagonal block of the operator.

    Construction is collective (the ranks agree on failure); ``solve`` is rank-local.
    """

    def __init__(self, operator: Operator) -> None:
        self.size = operator.local_range[1] - operator.local_range[0]
        error = None
        try:
            self.factor = sla.cho_factor(local_block(operator), lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            error = (f"bjacobi: the diagonal block of rank {operator.comm.rank} of {operator.name} "
                     f"is not numerically positive definite; {exc}; try -distgn_pc_type hss")
        agree_solver(operator.comm, error)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve with this rank's diagonal block."""
        return sla.cho_solve(self.factor, rhs, check_finite=False)

    def logdet(self) -> float:
        """Not available: a preconditioner is not a factorization of the matrix."""
        raise SolverError("the bjacobi preconditioner has no log-determinant of the matrix")

    def stats(self) -> dict:
        """Block size of this rank."""
        return {"type": "bjacobi", "block_rows": self.size}


@dataclasses.dataclass(frozen=True)
class PiecewiseBasis:
    """The 1D space of a matrix's neuron functions, in an augmented basis with a banded Gram.

    Mesh: ``L = z_0 < z_1 < ... < z_K = R``, the interior nodes the distinct breakpoints inside
    (L, R). Augmented coefficients ``y = [y_1, ..., y_{K-1}, y_glob]``: ``q`` per interior node and
    ``g`` global ones. "Values" are what the Gram is simple in:

    - A (q=1, g=2): ``v = sum_k y_k (x - z_k)_+ + a x + c``; values at the K+1 nodes; P1 mass.
    - H (q=1, g=1): ``v = sum_k y_k [x >= z_k] + c``; values on the K cells; diagonal of lengths.
    - G (q=2, g=2): ``v = sum_k (y_k0 x + y_k1) [x >= z_k] + a x + c``; per cell the
      coefficients (a, c) of ``a (x - mid) + c``, an orthogonal local basis; diagonal mass.

    Values are scaled by the square root of the mass diagonal. ``to_coefficients`` (``T^{-1}``:
    values -> y) is sparse and banded, the Gram of the augmented basis is ``T^T mass T``, so its
    inverse ``T^{-1} mass^{-1} T^{-T}`` costs O(K).
    """

    q: int
    g: int
    nodes: np.ndarray
    to_coefficients: sp.csr_matrix
    mass: sp.csr_matrix


def piecewise_basis(name: str, L: float, R: float, breakpoints: np.ndarray) -> PiecewiseBasis:
    """The augmented basis of matrix ``name`` on [L, R] for neurons with these breakpoints.

    The scaling makes the mass matrix the identity (H, G) or of condition number at most 3 (A, the
    P1 mass matrix). Rank-local.
    """
    nodes = np.unique(breakpoints[(breakpoints > L) & (breakpoints < R)])
    z = np.concatenate([[L], nodes, [R]])
    h, K = np.diff(z), z.size - 1
    jump = sp.diags([-np.ones(K - 1), np.ones(K - 1)], [0, 1], shape=(K - 1, K))
    first = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, K))
    if name == "A":
        slope = sp.diags([-1.0 / h, 1.0 / h], [0, 1], shape=(K, K + 1))
        node0 = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, K + 1))
        to_coefficients = sp.vstack([jump @ slope, first @ slope, node0 - L * (first @ slope)])
        diagonal = np.concatenate([[0.0], h]) / 3 + np.concatenate([h, [0.0]]) / 3
        mass = sp.diags([h / 6, diagonal, h / 6], [-1, 0, 1])
        q, g = 1, 2
    elif name == "H":
        to_coefficients, mass, q, g = sp.vstack([jump, first]), sp.diags(h), 1, 1
    else:
        # Per cell: v = a (x - mid) + c, an orthogonal local basis; coefficients are the jumps of
        # (slope, value at 0) = (a, c - a mid) at the nodes.
        mid = 0.5 * (z[:-1] + z[1:])
        below = np.column_stack([mid, np.zeros(K)]).ravel()[:-1]  # -mid under each 2x2 diagonal
        monomial = sp.identity(2 * K) - sp.diags(below, -1)
        to_coefficients = sp.kron(sp.vstack([jump, first]), sp.identity(2)) @ monomial
        mass = sp.diags(np.column_stack([h**3 / 12, h]).ravel())
        q, g = 2, 2
    unscale = sp.diags(1.0 / np.sqrt(mass.diagonal()))
    return PiecewiseBasis(q, g, nodes, (to_coefficients @ unscale).tocsr(),
                          (unscale @ mass @ unscale).tocsr())


def neuron_rows(name: str, w: np.ndarray, b: np.ndarray, L: float, R: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each neuron's functions in the augmented basis: ``scale_i * basis(node_i) + E_i y_glob``.

    Returns ``node`` (index of the neuron's breakpoint among the interior nodes, -1 if outside
    (L, R)), ``scale`` (A: |w|; H, G: sign w) and ``E`` (n, q, g): the global part, nonzero for
    left-facing neurons and neurons active on all of [L, R] (A: ``w x + b``; H: 1; G: (x, 1));
    zero for neurons inactive on [L, R] (then the matrix is singular).
    A left-facing ReLU is ``|w| (x - t)_+ + (w x + b)``, a left-facing Heaviside ``1 - [x >= t]``.
    """
    t = -b / w
    inside = (t > L) & (t < R)
    node = np.where(inside, np.searchsorted(np.unique(t[inside]), t), -1)
    everywhere = ~inside & ((w > 0) == (t <= L))  # the others outside are zero on [L, R]
    whole = (inside & (w < 0)) | everywhere
    if name == "A":
        scale = np.abs(w)
        E = np.where(whole[:, None], np.column_stack([w, b]), 0.0)[:, None, :]
    elif name == "H":
        scale = np.sign(w)
        E = whole.astype(float)[:, None, None]
    else:
        scale = np.sign(w)
        E = whole[:, None, None] * np.eye(2)[None]
    return node, np.where(inside, scale, 0.0), E


class HatSolver:
    """Exact O(n) solve with a 1D A, H or G: the ReLU -> hat transform of MATH.md, generalised.

    In the value coordinates of ``PiecewiseBasis`` (nodal values for A, cell values for H, cell
    polynomials for G) the matrix is ``M = V^T mass V`` with ``mass`` banded and V (m x nq) the
    neuron functions. V has a cheap left inverse B (``B V = I``): a neuron's coefficient is the
    jump of the function at its breakpoint (``to_coefficients`` then ``R^T``, R a right inverse
    of the neurons' augmented rows C); neurons without a breakpoint inside (L, R), and the second
    neuron at a shared breakpoint (eliminated against the first by a unit-triangular row operation
    ``Lrow``), are recovered from the affine remainder (``Ea``, at most g independent rows, else M
    is singular). V has at most g more rows than columns; with N an orthonormal basis of the
    null space of V^T, the splitting
    ``mass^{-1} = V M^{-1} V^T + mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1}`` gives

        ``M^{-1} = B (I - N N^T) (mass^{-1} - mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1})
        (I - N N^T) B^T``.

    The projections ``I - N N^T`` are exact identities; they keep rounding errors along N, which B
    would amplify (its null space, the affine functions, can be nearly inside the range of V), out
    of the result. One orientation with sorted distinct breakpoints and no nullity is MATH.md's
    ``A^{-1} = T^{-1} M^{-1} T^{-T}``; this form is exact (in exact arithmetic) for every 1D neuron
    set with a nonsingular matrix, any orientations. Rounding grows with the spread of cell lengths
    (nearly coinciding breakpoints) and with mixed orientations; see benchmarks/krylov.md.

    Every rank holds the whole O(n) transform; ``solve`` gathers the right-hand side (O(N) words),
    as a matvec does. Construction is rank-local and replicated; ``solve`` is collective.
    """

    def __init__(self, operator: Operator) -> None:
        if operator.domain.dim != 1:
            raise InputError(f"-{PREFIX}pc_type hat is for 1D domains; this domain is "
                             f"{operator.domain.dim}D (use -{PREFIX}pc_type hss)")
        self.operator = operator
        L, R = (float(v) for v in operator.domain.bounds[0])
        w, b = operator.W[:, 0], operator.b
        basis = piecewise_basis(operator.name, L, R, -b / w)
        node, scale, E = neuron_rows(operator.name, w, b, L, R)
        inside = np.flatnonzero(node >= 0)
        main = inside[np.unique(node[inside], return_index=True)[1]]  # first neuron at a node
        self.eliminated = inside[main[node[inside]] != inside]
        self.owner = main[node[self.eliminated]]
        self.ratio = scale[self.eliminated] / scale[self.owner]
        E_aff = E.copy()
        E_aff[self.eliminated] -= self.ratio[:, None, None] * E[self.owner]
        self.affine = np.concatenate([np.flatnonzero(node < 0), self.eliminated])
        Ea = E_aff[self.affine].reshape(-1, basis.g)
        if Ea.size and np.linalg.matrix_rank(Ea) < Ea.shape[0]:
            raise SolverError(f"hat: {self.affine.size} neurons are affine (or zero) on the "
                              f"domain or share a breakpoint: their functions are linearly "
                              f"dependent, so {operator.name} is singular")
        self.main, self.main_scale, self.main_E = main, scale[main], E[main]
        self.Ea_pinv = np.linalg.pinv(Ea) if Ea.size else np.zeros((basis.g, 0))
        Z = sla.null_space(Ea) if Ea.size else np.eye(basis.g)
        self.basis = basis
        self.mass_lu = spla.splu(basis.mass.tocsc(), permc_spec="NATURAL")
        N = np.vstack([(-np.einsum("kqg,gp->kqp", self.main_E, Z)
                        / self.main_scale[:, None, None]).reshape(main.size * basis.q, -1), Z])
        # N spans the null space of V^T: the null space of C mapped to value coordinates.
        self.null = np.linalg.qr(basis.to_coefficients.T @ N)[0]
        self.mass_null = self.mass_lu.solve(self.null)
        self.null_gram = sla.cho_factor(self.null.T @ self.mass_null) if Z.shape[1] else None

    def _projected_mass_inverse(self, u: np.ndarray) -> np.ndarray:
        """The middle of the class docstring's formula between ``to_coefficients`` maps: from
        augmented coefficients ``u = R Lrow f`` to ``to_coefficients @ (...) (B^T f)``. O(K)."""
        T = self.basis.to_coefficients
        x = T.T @ u
        x -= self.null @ (self.null.T @ x)
        a = self.mass_lu.solve(x)
        if self.null_gram is not None:
            a -= self.mass_null @ sla.cho_solve(self.null_gram, self.mass_null.T @ x)
            a -= self.null @ (self.null.T @ a)
        return T @ a

    def apply(self, f: np.ndarray) -> np.ndarray:
        """``M^{-1} f`` for full vectors f (N, k), tree order. Rank-local."""
        q, k = self.basis.q, f.shape[1]
        f = f.reshape(-1, q, k).copy()
        f[self.eliminated] -= self.ratio[:, None, None] * f[self.owner]
        # u = R f: global coefficients from the affine rows, then each node's own coefficient.
        y_glob = self.Ea_pinv @ f[self.affine].reshape(-1, k)
        y_node = ((f[self.main] - np.einsum("kqg,gc->kqc", self.main_E, y_glob))
                  / self.main_scale[:, None, None])
        u = np.vstack([y_node.reshape(-1, k), y_glob])
        a = self._projected_mass_inverse(u)
        # x = R^T a, then Lrow^T.
        a_node = a[:-self.basis.g].reshape(-1, q, k) / self.main_scale[:, None, None]
        a_glob = a[-self.basis.g:] - np.einsum("kqg,kqc->gc", self.main_E, a_node)
        x = np.zeros_like(f)
        x[self.main] = a_node
        x[self.affine] = (self.Ea_pinv.T @ a_glob).reshape(-1, q, k)
        np.add.at(x, self.owner, -self.ratio[:, None, None] * x[self.eliminated])
        return x.reshape(-1, k)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective."""
        full = self.operator.gather(rhs)
        start, stop = self.operator.local_range
        return self.apply(full.reshape(full.shape[0], -1))[start:stop].reshape(rhs.shape)

    def logdet(self) -> float:
        """Not provided (the hat transform is used as a preconditioner)."""
        raise SolverError("the hat preconditioner has no log-determinant; use solver.kind = "
                          "\"dense\" or \"hss\"")

    def stats(self) -> dict:
        """Sizes of the transform."""
        return {"type": "hat", "interior_nodes": int(self.basis.nodes.size),
                "affine_rows": int(self.affine.size), "nullity": int(self.null.shape[1])}


def preconditioner(pc_type: str, operator: Operator, config: SolverConfig, hss_tol: float
                   ) -> Factorization | None:
    """The distgn factorization behind a python PC type, None for PETSc's own. Collective."""
    if pc_type == "bjacobi":
        return BlockCholesky(operator)
    if pc_type == "hat":
        return HatSolver(operator)
    if pc_type == "hss":
        from distgn.hss import factor as factor_hss

        return factor_hss(operator, dataclasses.replace(config, kind="hss", tol=hss_tol))
    return None


# --- options --------------------------------------------------------------------------------------


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
        raise InputError(f"solver.petsc_options = {petsc_options!r}: "
                         f"{petsc_message(exc)}") from None
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


def _option(db: PETSc.Options, name: str, getter: str, default: object) -> object:
    """Read ``-distgn_<name>`` with a one-line InputError for a malformed value."""
    try:
        return getattr(db, getter)(PREFIX + name, default)
    except PETSc.Error as exc:
        raise InputError(f"PETSc option -{PREFIX}{name}: {petsc_message(exc)}") from None


# --- the solver -----------------------------------------------------------------------------------


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _destroy_live() -> None:
    """Destroy PETSc objects still owned at exit, before petsc4py finalizes PETSc (atexit runs in
    reverse order of registration): python-type Mat/PC contexts destroyed after PetscFinalize
    crash the interpreter. Collective (every rank holds the same solvers)."""
    for owner in list(_LIVE):
        owner.destroy()


class PetscOwner:
    """Base of the solvers that own PETSc objects, and frees them deterministically.

    petsc4py does not destroy objects living on more than one rank at garbage collection (their
    destruction is collective), so without this a factorization dropped on P > 1 ranks would leak
    its matrices. An owner destroys its objects in ``destroy()``, in ``__del__`` (reference
    counting drops a solver at the same point on every rank; solvers hold no reference cycles), or
    at exit. Collective.
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
        if self._petsc:
            for obj in reversed(self._petsc):
                obj.destroy()
            self._petsc.clear()
            _LIVE.discard(self)

    def __del__(self) -> None:
        self.destroy()


class KrylovSolver(PetscOwner):
    """A configured KSP on an operator; ``solve`` runs it. See ``factor``."""

    def __init__(self, operator: Operator, config: SolverConfig) -> None:
        super().__init__()
        self.operator, self.config = operator, config
        self.last: dict = {}
        start = time.perf_counter()
        with log_stage("distgn: setup"), solver_options(config.petsc_options, {}) as db:
            ksp_type = _option(db, "ksp_type", "getString", KSP_DEFAULT)
            pc_type = _option(db, "pc_type", "getString", "none")
            hss_tol = _option(db, "pc_hss_tol", "getReal", HSS_PC_TOL)
            if ksp_type not in _KSP_TYPES:
                raise InputError(f"PETSc option -{PREFIX}ksp_type {ksp_type!r} is not a KSP type "
                                 f"(distgn uses cg, minres or pipecg)")
            if pc_type not in PC_TYPES:
                raise InputError(f"PETSc option -{PREFIX}pc_type {pc_type!r} is not one of "
                                 f"{', '.join(PC_TYPES)}")
            if not hss_tol > 0:
                raise InputError(f"PETSc option -{PREFIX}pc_hss_tol {hss_tol!r} must be positive")
            self.pc_factorization = preconditioner(pc_type, operator, config, hss_tol)
            self.mat, self._storage = operator_matrix(operator, config.matrix_free)
            self.own(self.mat)
            self._configure(ksp_type, pc_type, db)
            self._x, self._b = (self.own(v) for v in self.mat.createVecs())
        self.ksp_type, self.pc_type = self.ksp.getType(), pc_type
        self.setup_seconds = operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)

    def _configure(self, ksp_type: str, pc_type: str, db: PETSc.Options) -> None:
        """KSP with defaults, then the options database, then distgn's python PC. Collective."""
        ksp = self.ksp = self.own(PETSc.KSP().create(self.operator.comm))
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
                runs.append((int(self.ksp.getConvergedReason()), self.ksp.getIterationNumber(),
                             [float(r) for r in self.ksp.getConvergenceHistory()]))
        seconds = self.operator.comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        failed = [run for run in runs if run[0] < 0]
        reason, iterations, history = failed[0] if failed else max(runs, key=lambda run: run[1])
        residual = self.operator.matvec(out) - columns
        norms = np.sqrt(self.operator.comm.allreduce(
            np.array([np.sum(residual**2), np.sum(columns**2)])))
        relative = float(norms[0] / norms[1]) if norms[1] > 0 else float(norms[0])
        rtol = self.ksp.getTolerances()[0]
        stagnated = not failed and relative > RESIDUAL_GAP * rtol
        self.last = {"converged": not (failed or stagnated), "iterations": iterations,
                     "converged_reason": _REASON_NAMES[reason], "residual_history": history,
                     "columns": columns.shape[1], "true_relative_residual": relative,
                     "seconds": seconds}
        if failed or stagnated:
            what = ("did not converge" if failed else
                    f"stagnated: the recursively updated residual met rtol but the true residual "
                    f"is above {RESIDUAL_GAP:g} rtol ({rtol:g})")
            raise NotConvergedError(
                f"Krylov solve ({self.ksp_type}, pc {self.pc_type}) of {self.operator.name} "
                f"{what}: {_REASON_NAMES[reason]} after {iterations} iterations, "
                f"||b - M x|| / ||b|| = {relative:.2e}", out.reshape(rhs.shape))
        return out.reshape(rhs.shape)

    def logdet(self) -> float:
        """Not available from a Krylov solve: raises SolverError (use kind "dense" or "hss")."""
        raise SolverError("solver.kind = \"krylov\" has no log-determinant; use solver.kind = "
                          "\"dense\" or \"hss\"")

    def stats(self) -> dict:
        """Method, PC, norm, tolerances, setup time and the last solve's outcome. Collective."""
        rtol, _, _, max_it = self.ksp.getTolerances()
        norm = {int(v): k for k, v in vars(PETSc.KSP.NormType).items() if k.isupper()}
        pc_stats = self.pc_factorization.stats() if self.pc_factorization is not None else {}
        return {"kind": "krylov", "ksp_type": self.ksp_type, "pc_type": self.pc_type,
                "norm_type": norm[int(self.ksp.getNormType())].lower(), "rtol": rtol,
                "max_iter": max_it, "mat_type": self.mat.getType(),
                "setup_seconds": self.setup_seconds, "pc_stats": pc_stats, **self.last}


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
