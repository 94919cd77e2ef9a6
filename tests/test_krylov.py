"""PETSc Krylov back end: matrices, options under ``-distgn_``, preconditioners, failure reports.

Run serially and under ``mpiexec -n 2`` / ``-n 4``; references are dense solves of the gathered
matrix on every rank (small n).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc

from distgn.assembly import pair_integrals
from distgn.config import SolverConfig, load_config
from distgn.domain import box, interval
from distgn.errors import ConvergenceError, InputError, SolverError
from distgn.operator import Operator, build
from distgn.problem import build_problem
from distgn.solvers import factor, hat, krylov, petsc
from distgn.tree import build_tree

UNIFORM = ["network.n=64"]
MIXED = ["network.n=96", 'network.init="random"', 'network.orientation="random"']
BOX = [
    'domain.kind="box"',
    "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
    "network.n=40",
    'network.init="random"',
    'target.name="smooth"',
]


def operator_for(
    comm: MPI.Comm, overrides: list[str], name: str = "A", leaf: int = 16, matrix_free: bool = False
) -> tuple[Operator, np.ndarray]:
    """The neuron-basis operator ``name`` of the problem given by config overrides (``solver.basis
    = "relu"``: these tests exercise the back ends on it), and this rank's F rows."""
    config = load_config(
        None,
        overrides
        + [
            f"solver.leaf_size={leaf}",
            'solver.basis="relu"',
            f"solver.matrix_free={str(matrix_free).lower()}",
        ],
    )
    operator, blocks = build(build_problem(config), config.solver, comm, name)
    return operator, blocks.F


def gathered(operator: Operator) -> np.ndarray:
    """The whole matrix on every rank."""
    return np.vstack(operator.comm.allgather(operator.rows))


def local_rhs(operator: Operator, seed: int = 7, columns: int = 0) -> np.ndarray:
    """This rank's rows of a seeded random right-hand side (N,) or (N, columns)."""
    shape = (operator.size, columns) if columns else (operator.size,)
    start, stop = operator.local_range
    return np.random.default_rng(seed).standard_normal(shape)[start:stop]


def petsc_vector(mat: PETSc.Mat, x: np.ndarray) -> PETSc.Vec:
    """A vector of ``mat``'s column layout holding ``x``."""
    vec = mat.createVecRight()
    vec.array = x
    return vec


def krylov_config(options: str = "", **keys) -> SolverConfig:
    return SolverConfig(kind="krylov", petsc_options=options, **keys)


def hss_available() -> bool:
    try:
        from distgn.solvers.hss import factor as _  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.mpi
def test_dense_matrix_wraps_the_rows(comm):
    operator, _ = operator_for(comm, UNIFORM)
    mat, storage = petsc.operator_matrix(operator, matrix_free=False)
    x = local_rhs(operator)
    product = mat.createVecLeft()
    mat.mult(petsc_vector(mat, x), product)
    assert np.allclose(product.array_r, operator.matvec(x), rtol=1e-13, atol=0)
    if comm.size == 1:
        assert mat.getType() == "seqdense"
        assert np.shares_memory(mat.getDenseArray(), operator.rows)
    else:
        assert mat.getType() == "mpidense"
        assert storage.flags.f_contiguous and np.array_equal(storage, operator.rows)
    mat.destroy()


CASES = {"H-1d": (UNIFORM, "H"), "A-1d-small": (["network.n=16"], "A"), "H-2d": (BOX, "H")}


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pc", krylov.PC_TYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cg_with_each_pc_matches_dense(comm, case, pc):
    overrides, name = CASES[case]
    operator, _ = operator_for(comm, overrides, name)
    if pc == "hat" and operator.domain.dim != 1:
        with pytest.raises(InputError, match="1D"):
            factor(operator, krylov_config(f"-distgn_pc_type {pc}"))
        return
    if pc == "hss" and not hss_available():
        pytest.fail("distgn.solvers.hss is not available: the hss preconditioner cannot be tested")
    solver = factor(operator, krylov_config(f"-distgn_pc_type {pc}", rtol=1e-10))
    f = local_rhs(operator)
    x = solver.solve(f)
    stats = solver.stats()
    assert stats["converged"] and stats["converged_reason"] == "CONVERGED_RTOL"
    assert stats["pc_type"] == pc and stats["ksp_type"] == "cg"
    assert stats["true_relative_residual"] <= 100 * 1e-10
    M = gathered(operator)
    exact = np.linalg.solve(M, operator.gather(f))
    start, stop = operator.local_range
    error = np.linalg.norm(x - exact[start:stop]) / np.linalg.norm(exact[start:stop])
    assert error <= 1e-10 * np.linalg.cond(M)
    solver.destroy()


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_hat_pc_iterations_independent_of_n(comm):
    iterations = []
    for n in (128, 256, 512, 1024):
        operator, F = operator_for(comm, [f"network.n={n}"], "A", leaf=64)
        solver = factor(operator, krylov_config("-distgn_pc_type hat", rtol=1e-10))
        solver.solve(F)
        iterations.append(solver.stats()["iterations"])
        solver.destroy()
    assert max(iterations) <= 3 and max(iterations) - min(iterations) <= 1, iterations


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["A", "H", "G"])
@pytest.mark.parametrize("overrides", [UNIFORM, MIXED], ids=["uniform", "mixed"])
def test_hat_solver_is_exact_in_1d(comm, overrides, name):
    """The generalised hat transform solves A, H, G (any orientations) to a small backward error."""
    operator, _ = operator_for(comm, overrides, name)
    solver = hat.HatSolver(operator)
    f = local_rhs(operator, columns=2)
    x = solver.solve(f)
    M = gathered(operator)
    xf, ff = operator.gather(x), operator.gather(f)
    backward = np.linalg.norm(M @ xf - ff) / (
        np.linalg.norm(M, 2) * np.linalg.norm(xf) + np.linalg.norm(ff)
    )
    assert backward <= 1e-11


RANDOM_256 = ["network.n=256", 'network.init="random"']


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("overrides", "name", "bound"),
    [
        (RANDOM_256, "A", 1e-11),
        (RANDOM_256 + ['network.orientation="random"'], "A", 1e-9),
        (RANDOM_256 + ['network.orientation="random"'], "G", 1e-9),
    ],
    ids=["random-A", "mixed-A", "mixed-G"],
)
def test_hat_solver_residual_of_a_consistent_system(comm, overrides, name, bound):
    """``M x = M c`` (c random) with random breakpoints: the relative residual ``|M x - f| / |f|``
    stays small although cond(M) is far beyond 1/eps. The part of the value-coordinate solution
    outside the neurons' span is rounding there and must not be added back: it was, and the
    residuals were 1.6e-8 (random, A), 1.6e-3 (mixed, A) and 3.7 (mixed, G); now 1.4e-13,
    5e-11 and 2e-11 on one rank (benchmarks/krylov.md, hat table)."""
    operator, _ = operator_for(comm, overrides, name)
    c = local_rhs(operator, seed=0)
    f = operator.matvec(c)
    x = hat.HatSolver(operator).solve(f)
    residual = np.linalg.norm(operator.gather(operator.matvec(x) - f))
    assert residual <= bound * np.linalg.norm(operator.gather(f))


def test_hat_solver_refuses_2d_and_dependent_neurons():
    comm = MPI.COMM_SELF
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([-0.5, -0.5])
    tree = build_tree(np.arange(2), 1, 4)
    with pytest.raises(InputError, match="1D"):
        hat.HatSolver(Operator("A", comm, tree, box([[0, 1], [0, 1]]), W, b))
    # A right- and a left-facing ReLU at each of three breakpoints: differences are affine, so three
    # independent affine functions would be needed: singular.
    t = np.repeat([0.2, 0.5, 0.8], 2)
    w = np.tile([1.0, -1.0], 3)[:, None]
    tree = build_tree(np.arange(6), 1, 8)
    rows = pair_integrals(interval(0.0, 1.0), w, -w[:, 0] * t, np.arange(6), np.arange(6), ("A",))
    singular = Operator("A", comm, tree, interval(0.0, 1.0), w, -w[:, 0] * t, rows["A"])
    with pytest.raises(SolverError, match="linearly dependent"):
        hat.HatSolver(singular)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_hss_pc_converges_fast_where_cg_needs_hundreds(comm):
    if not hss_available():
        pytest.fail("distgn.solvers.hss is not available: the hss preconditioner cannot be tested")
    operator, F = operator_for(comm, ["network.n=256"], "A", leaf=32)
    plain = factor(operator, krylov_config(max_iter=200))
    with pytest.raises(krylov.NotConvergedError, match="DIVERGED_ITS"):
        plain.solve(F)
    assert plain.stats()["iterations"] == 200
    solver = factor(operator, krylov_config("-distgn_pc_type hss -distgn_pc_hss_tol 1e-4"))
    solver.solve(F)
    stats = solver.stats()
    assert stats["converged"] and stats["iterations"] <= 15
    assert stats["pc_stats"]["samples"] > 0
    plain.destroy()
    solver.destroy()


@pytest.mark.mpi
def test_options_under_the_prefix_are_honoured(comm):
    operator, _ = operator_for(comm, UNIFORM, "H")
    before = PETSc.Options().getAll()
    solver = factor(
        operator,
        krylov_config(
            "-distgn_ksp_type minres -distgn_pc_type jacobi -distgn_ksp_rtol 1e-8", rtol=1e-3
        ),
    )
    solver.solve(local_rhs(operator))
    stats = solver.stats()
    assert (stats["ksp_type"], stats["pc_type"], stats["rtol"]) == ("minres", "jacobi", 1e-8)
    assert stats["norm_type"] == "preconditioned"  # MINRES in PETSc 3.18 has no other norm
    assert PETSc.Options().getAll() == before  # config options do not leak
    solver.destroy()
    # The command line (here: the database before setup) wins over the config.
    PETSc.Options().setValue("distgn_ksp_type", "cg")
    try:
        solver = factor(operator, krylov_config("-distgn_ksp_type minres"))
        stats = solver.stats()
        assert (stats["ksp_type"], stats["norm_type"]) == ("cg", "unpreconditioned")
        solver.destroy()
    finally:
        PETSc.Options().delValue("distgn_ksp_type")


@pytest.mark.mpi
def test_pipelined_cg_runs(comm):
    operator, _ = operator_for(comm, UNIFORM, "H")
    solver = factor(operator, krylov_config("-distgn_ksp_type pipecg -distgn_pc_type bjacobi"))
    solver.solve(local_rhs(operator))
    assert solver.stats()["ksp_type"] == "pipecg" and solver.stats()["converged"]
    solver.destroy()


@pytest.mark.mpi
@pytest.mark.parametrize(
    "options, value",
    [
        ("-distgn_ksp_type nonsense", "nonsense"),
        ("-distgn_pc_type bogus", "bogus"),
        ("-distgn_ksp_rtol abc", "abc"),
        ("-distgn_pc_hss_tol -1", "-1"),
        ("-distgn_ksp_max_it 2.5x", "2.5x"),
    ],
)
def test_bad_option_value_is_a_clear_error(comm, options, value):
    operator, _ = operator_for(comm, UNIFORM, "H")
    with pytest.raises(InputError) as info:
        factor(operator, krylov_config(options))
    message = str(info.value)
    assert value in message and "\n" not in message


def test_bad_shorthands_are_clear_errors():
    operator, _ = operator_for(MPI.COMM_SELF, UNIFORM, "H")
    with pytest.raises(InputError, match="solver.rtol"):
        factor(operator, krylov_config(rtol=0.0))
    with pytest.raises(InputError, match="solver.max_iter"):
        factor(operator, krylov_config(max_iter=0))


@pytest.mark.mpi
def test_diverged_solve_is_reported_not_returned(comm):
    operator, F = operator_for(comm, UNIFORM, "A")
    solver = factor(operator, krylov_config(max_iter=3))
    with pytest.raises(krylov.NotConvergedError, match="DIVERGED_ITS") as info:
        solver.solve(F)
    assert isinstance(info.value, ConvergenceError)  # the CLI's exit status 3
    stats = solver.stats()
    assert not stats["converged"] and stats["converged_reason"] == "DIVERGED_ITS"
    assert stats["iterations"] == 3 and len(stats["residual_history"]) == 4
    with pytest.raises(SolverError, match="log-determinant"):
        solver.logdet()
    solver.destroy()


@pytest.mark.mpi
def test_stagnation_is_reported(comm):
    """CG's recursive residual meets rtol but the true residual of G (cond ~ 1e17) cannot."""
    operator, _ = operator_for(comm, MIXED, "G")
    solver = factor(operator, krylov_config("-distgn_pc_type hat", rtol=1e-10))
    F = local_rhs(operator)
    with pytest.raises(krylov.NotConvergedError, match="stagnated"):
        solver.solve(F)
    stats = solver.stats()
    assert not stats["converged"] and stats["converged_reason"] == "CONVERGED_RTOL"
    assert stats["true_relative_residual"] > 100 * 1e-10
    solver.destroy()


@pytest.mark.mpi
@pytest.mark.parametrize("rows", [True, False], ids=["rows", "fast-product"])
def test_matrix_free_shell(comm, rows):
    operator, _ = operator_for(comm, UNIFORM, "H", matrix_free=not rows)
    solver = factor(operator, krylov_config("-distgn_pc_type jacobi", matrix_free=True))
    f = local_rhs(operator, columns=3)
    x = solver.solve(f)
    assert solver.stats()["mat_type"] == "python" and solver.stats()["columns"] == 3
    reference, _ = operator_for(comm, UNIFORM, "H")
    exact = np.linalg.solve(gathered(reference), operator.gather(f))
    start, stop = operator.local_range
    assert np.allclose(x, exact[start:stop], rtol=1e-7, atol=1e-7 * np.abs(exact).max())
    assert np.allclose(operator.diagonal(), reference.diagonal())
    solver.destroy()


def test_log_view_shows_the_stages(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distgn",
            "solve",
            "--set",
            'solver.kind="krylov"',
            "--set",
            "network.n=32",
            "--set",
            f'output.path="{tmp_path / "run.h5"}"',
            "-distgn_pc_type",
            "hat",
            "-log_view",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    for stage in ("distgn: assembly", "distgn: setup", "distgn: solve"):
        assert stage in out.stdout
