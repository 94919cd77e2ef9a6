"""Benchmarks of the HSS solver (results and commands in benchmarks/hss.md).

Usage (BLAS threads pinned by the caller, e.g. OMP_NUM_THREADS=1)::

    python scripts/bench_hss.py dense1d [--n 16384]
    python scripts/bench_hss.py matrix-free [--sizes 14 16 18 20]
    python scripts/bench_hss.py box2d [--sizes 4096 8192] [--orderings foot angle]
    mpiexec -n 2 python scripts/bench_hss.py ranks [--n 16384]

Right-hand sides are ``f = A x0`` with a random x0 (see ``consistent_rhs``).
``dense1d``: 1D A (uniform breakpoints) from dense block rows, HSS factor + solve against scipy's
``cho_factor``/``cho_solve`` (shifted when it breaks down) and the exact hat-basis transform, on the
same matrix in one run. ``matrix-free``: assembly-free 1D A up to 2^20 neurons, backward error from
the fast product, fitted time slope. ``box2d``: 2D random lines in the unit square, time, memory,
max rank and backward error (right-hand side ``A x0``, x0 random) versus tolerance and ordering
against dense Cholesky, plus CG iterations preconditioned by the loose-tolerance
(Schur-compensated) factorization. ``ranks``: the
same 1D problem on one rank (``COMM_SELF``) and on all ranks in one run, with bytes per level.
Each line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from mpi4py import MPI

from distgn.config import load_config
from distgn.operator import Operator, build
from distgn.problem import build_problem
from distgn.solvers import backward_error
from distgn.solvers.hss import factor


def report(comm: MPI.Comm, **fields: object) -> None:
    """Print one JSON line on rank 0."""
    if comm.rank == 0:
        print(json.dumps(fields), flush=True)


def operator_for(
    comm: MPI.Comm, sets: list[str], name: str = "A"
) -> tuple[Operator, object, float]:
    """Operator, solver settings and assembly seconds of a configuration."""
    config = load_config(None, sets)
    start = time.perf_counter()
    op = build(build_problem(config), config.solver, comm, name)[0]
    return op, config.solver, comm.allreduce(time.perf_counter() - start, op=MPI.MAX)


def consistent_rhs(op: Operator) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of a random x0 (tree order) and of ``f = M x0``. Collective.

    With cond(M) near 1/eps a random f would give a huge ||x|| and a meaninglessly small
    backward error; ``f = M x0`` keeps the solution of the size of x0.
    """
    start, stop = op.local_range
    x0 = np.random.default_rng(0).standard_normal(op.size)[start:stop]
    return x0, op.matvec(x0)


def hss_run(op: Operator, solver, rhs: np.ndarray, x0: np.ndarray) -> dict:
    """Factor, solve (one right-hand side) and measure the backward error. Collective."""
    comm = op.comm
    start = time.perf_counter()
    fact = factor(op, solver)
    seconds_factor = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    start = time.perf_counter()
    x = fact.solve(rhs)
    seconds_solve = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    stats = fact.stats()
    error = backward_error(op, x, rhs, op.norm_estimate(iterations=20))
    sizes = comm.allreduce(np.array([np.sum(x * x), np.sum(x0 * x0)]))
    return dict(
        seconds_factor=seconds_factor,
        seconds_solve=seconds_solve,
        backward_error=error,
        solution_norm_ratio=float(np.sqrt(sizes[0] / sizes[1])),
        max_rank=stats["max_rank"],
        ranks_per_level=stats["ranks_per_level"],
        factor_bytes=stats["factor_bytes_total"],
        scheme=stats["scheme"],
        shifted_blocks=stats["shifted_blocks"],
        samples=stats["samples"],
        bytes_sent_per_level=stats["bytes_sent_per_level"],
        x=x,
    )


def dense_cholesky(M: np.ndarray, rhs: np.ndarray, norm: float) -> dict:
    """scipy Cholesky factor + solve, shifted by 16 eps ||M|| 10^k until it succeeds.

    ``seconds`` is the time of the successful attempt; ``seconds_failed`` of the failed ones.
    """
    shift, failed = 0.0, 0.0
    while True:
        start = time.perf_counter()
        try:
            factor_ = sla.cho_factor(M + shift * np.eye(M.shape[0]) if shift else M)
            x = sla.cho_solve(factor_, rhs)
            seconds = time.perf_counter() - start
            error = np.linalg.norm(M @ x - rhs) / (norm * np.linalg.norm(x) + np.linalg.norm(rhs))
            return dict(
                seconds=seconds,
                seconds_failed=failed,
                shift=shift,
                backward_error=float(error),
                bytes=int(M.nbytes),
            )
        except np.linalg.LinAlgError:
            failed += time.perf_counter() - start
            shift = 10.0 * shift if shift else 16 * np.finfo(float).eps * norm


def hat_solver(t: np.ndarray) -> spla.LinearOperator:
    """Exact O(n) solve with 1D A of one orientation and sorted distinct breakpoints t on [0, 1].

    ``A = T^T M T``: T maps ReLU coefficients to nodal values of the hat basis on the mesh
    ``t_2 < ... < t_n < 1`` (the value at t_1 is 0), M is the P1 mass matrix; ``T^{-1}`` takes
    slopes of the piecewise linear function and their jumps (two bidiagonal matrices).
    """
    nodes = np.append(t[1:], 1.0)
    h = np.diff(np.concatenate([[t[0]], nodes]))
    n = t.size
    slopes = sp.diags([1.0 / h, -1.0 / h[1:]], [0, -1], format="csr")
    jumps = sp.diags([np.ones(n), -np.ones(n - 1)], [0, -1], format="csr")
    T_inv = (jumps @ slopes).tocsr()
    banded = np.zeros((2, n))
    banded[1] = (h + np.append(h[1:], 0.0)) / 3.0
    banded[0, 1:] = h[1:] / 6.0
    mass = sla.cholesky_banded(banded)

    def solve(f: np.ndarray) -> np.ndarray:
        return T_inv @ sla.cho_solve_banded((mass, False), T_inv.T @ f)

    return spla.LinearOperator((n, n), matvec=solve, dtype=float)


def dense1d(args: argparse.Namespace) -> None:
    comm = MPI.COMM_SELF
    sets = [
        f"network.n={args.n}",
        "network.init=uniform",
        "solver.tol=1e-12",
        f"solver.leaf_size={args.leaf}",
    ]
    op, solver, seconds = operator_for(comm, sets)
    x0, rhs = consistent_rhs(op)
    result = hss_run(op, solver, rhs, x0)
    result.pop("x")
    report(
        MPI.COMM_WORLD,
        benchmark="dense1d",
        n=args.n,
        solver="hss",
        seconds_assemble=seconds,
        **result,
    )
    report(
        MPI.COMM_WORLD,
        benchmark="dense1d",
        n=args.n,
        solver="scipy cho_factor/cho_solve",
        **dense_cholesky(op.rows, rhs, op.norm_estimate(iterations=20)),
    )
    t = -op.b / op.W[:, 0]
    start = time.perf_counter()
    solve = hat_solver(t)
    x = solve @ rhs
    seconds_hat = time.perf_counter() - start
    error = backward_error(op, x, rhs, op.norm_estimate(iterations=20))
    report(
        MPI.COMM_WORLD,
        benchmark="dense1d",
        n=args.n,
        solver="exact hat transform",
        seconds=seconds_hat,
        backward_error=error,
    )


def matrix_free(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    sizes, times = [], []
    for p in args.sizes:
        n = 2**p
        sets = [
            f"network.n={n}",
            "network.init=uniform",
            "solver.matrix_free=true",
            f"solver.tol={args.tol}",
            f"solver.leaf_size={args.leaf}",
        ]
        op, solver, seconds = operator_for(comm, sets)
        x0, rhs = consistent_rhs(op)
        result = hss_run(op, solver, rhs, x0)
        result.pop("x")
        total = result["seconds_factor"] + result["seconds_solve"]
        sizes.append(n)
        times.append(total)
        report(
            comm,
            benchmark="matrix-free",
            n=n,
            ranks=comm.size,
            tol=args.tol,
            seconds_setup=seconds,
            seconds_total=total,
            **result,
        )
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0] if len(sizes) > 1 else None
    report(comm, benchmark="matrix-free", fitted_time_slope=slope, sizes=sizes, seconds=times)


def box2d(args: argparse.Namespace) -> None:
    comm = MPI.COMM_SELF
    for n in args.sizes:
        base = [
            f"network.n={n}",
            "network.init=random",
            "domain.kind=box",
            "domain.bounds=[[0,1],[0,1]]",
            f"solver.leaf_size={args.leaf}",
        ]
        for ordering in args.orderings:
            op, _, seconds = operator_for(comm, base + [f"solver.ordering={ordering}"])
            x0, rhs = consistent_rhs(op)
            report(
                MPI.COMM_WORLD,
                benchmark="box2d",
                n=n,
                ordering=ordering,
                solver="scipy cho_factor/cho_solve",
                seconds_assemble=seconds,
                **dense_cholesky(op.rows, rhs, op.norm_estimate(iterations=20)),
            )
            for tol in args.tols:
                config = load_config(
                    None, base + [f"solver.ordering={ordering}", f"solver.tol={tol}"]
                )
                result = hss_run(op, config.solver, rhs, x0)
                result.pop("x")
                report(
                    MPI.COMM_WORLD,
                    benchmark="box2d",
                    n=n,
                    ordering=ordering,
                    tol=tol,
                    solver="hss",
                    **result,
                )
            for tol in args.pc_tols:
                config = load_config(
                    None, base + [f"solver.ordering={ordering}", f"solver.tol={tol}"]
                )
                report(
                    MPI.COMM_WORLD,
                    benchmark="box2d",
                    n=n,
                    ordering=ordering,
                    tol=tol,
                    solver="cg + hss preconditioner",
                    **preconditioned_cg(op, config.solver, rhs),
                )


def preconditioned_cg(op: Operator, solver, rhs: np.ndarray) -> dict:
    """scipy CG (relative residual 1e-10, at most 500 iterations), HSS preconditioner."""
    start = time.perf_counter()
    fact = factor(op, solver)
    seconds_factor = time.perf_counter() - start
    iterations = []
    M = spla.LinearOperator(op.rows.shape, matvec=fact.solve, dtype=float)
    start = time.perf_counter()
    x, info = spla.cg(
        op.rows, rhs, tol=1e-10, maxiter=500, M=M, callback=lambda xk: iterations.append(1)
    )
    error = backward_error(op, x, rhs, op.norm_estimate(iterations=20))
    return dict(
        seconds_factor=seconds_factor,
        seconds_cg=time.perf_counter() - start,
        iterations=len(iterations),
        converged=info == 0,
        backward_error=error,
        max_rank=fact.stats()["max_rank"],
        factor_bytes=fact.stats()["factor_bytes"],
    )


def ranks(args: argparse.Namespace) -> None:
    world = MPI.COMM_WORLD
    sets = [
        f"network.n={args.n}",
        "network.init=uniform",
        "solver.tol=1e-12",
        f"solver.leaf_size={args.leaf}",
    ]
    for comm in (MPI.COMM_SELF, world):
        if comm is MPI.COMM_SELF and world.rank != 0:
            world.Barrier()
            continue
        op, solver, seconds = operator_for(comm, sets)
        x0, rhs = consistent_rhs(op)
        result = hss_run(op, solver, rhs, x0)
        result.pop("x")
        report(
            comm,
            benchmark="ranks",
            n=args.n,
            ranks=comm.size,
            seconds_assemble=seconds,
            seconds_total=result["seconds_factor"] + result["seconds_solve"],
            **result,
        )
        if comm is MPI.COMM_SELF:
            world.Barrier()
            del op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    p = sub.add_parser("dense1d")
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--leaf", type=int, default=64)
    p = sub.add_parser("matrix-free")
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 16, 18, 20])
    p.add_argument("--tol", type=float, default=1e-12)
    p.add_argument("--leaf", type=int, default=128)
    p = sub.add_parser("box2d")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--orderings", nargs="+", default=["foot", "angle"])
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-4, 1e-8, 1e-12])
    p.add_argument("--pc-tols", type=float, nargs="+", default=[1e-2, 1e-4])
    p.add_argument("--leaf", type=int, default=64)
    p = sub.add_parser("ranks")
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--leaf", type=int, default=64)
    args = parser.parse_args()
    benchmarks = {"dense1d": dense1d, "matrix-free": matrix_free, "box2d": box2d, "ranks": ranks}
    benchmarks[args.benchmark](args)


if __name__ == "__main__":
    main()
