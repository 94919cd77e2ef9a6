"""Command-line interface: ``distgn {assemble, analyze, solve, train, inspect}``.

Every subcommand runs under ``mpiexec -n P`` (all ranks execute it; rank 0 prints), accepts
``--set section.key=value`` overrides and ``--json`` (one JSON object, its results, as the last line
of rank 0's stdout). Options starting with a single dash that argparse does not know (e.g.
``-distgn_ksp_type minres -log_view``) go to PETSc's options database.
Exit codes: 0 success, 2 bad input or solver failure (one line on stderr), 3 an iterative solve
did not converge, 1 internal error (the job is aborted so no rank hangs).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distgn import __version__
from distgn.analysis import run_study
from distgn.assembly import MATRICES, assemble_block_rows
from distgn.config import Config, load_config, to_dict
from distgn.errors import InputError
from distgn.fit import solve_output_weights
from distgn.io import inspect, load_state, save_state, write_block_rows
from distgn.operator import build
from distgn.parallel import log, print0, run_collectively, setup_logging, timed
from distgn.problem import Problem, build_problem
from distgn.solvers import backward_error, factor, initialize, log_stage
from distgn.solvers.traffic import CountingComm, summary
from distgn.training import train
from distgn.tree import ClusterTree, network_tree


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one-line InputErrors and whose help prints on rank 0."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")

    def _print_message(self, message: str, file: object = None) -> None:
        if MPI.COMM_WORLD.rank == 0:
            super()._print_message(message, file)  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distgn", description="Exact ReLU-network matrices, hierarchical solvers and SgGN.")
    parser.add_argument("--version", action="version", version=f"distgn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("config", nargs="?", help="TOML config file (defaults if omitted)")
            p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override a config key (repeatable)")
        p.add_argument("--json", action="store_true", help="print results as one JSON line")
        p.add_argument("-v", "--verbose", action="store_true", help="debug output on rank 0")
        return p

    p = command("assemble", "assemble A, H, G and F exactly and write them to HDF5")
    p.add_argument("-o", "--output", help="output HDF5 file (default: output.path)")
    p.add_argument("--matrices", default="A,H,G", help="comma-separated subset of A,H,G")
    p = command("analyze", "condition numbers, spectra and HSS ranks of A, H, G versus n")
    p.add_argument("--sizes", help="comma-separated n values (default: analyze.sizes)")
    p.add_argument("-o", "--output", help="output HDF5 file (default: output.path)")
    command("solve", "solve A c = F (or H, G systems) with the configured solver")
    p = command("train", "fit the target by SgGN or a baseline optimizer")
    p.add_argument("--restart", help="continue from this run file (network and history)")
    p = command("inspect", "summarise a distgn HDF5 file", config=False)
    p.add_argument("path", help="HDF5 file")
    return parser


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split argv into distgn arguments and PETSc options (``-name [value]``).

    A PETSc option is one dash and a name of at least two characters; it takes the next token as
    its value unless that token is an option itself or a ``.toml`` file (so ``-log_view
    run.toml`` still reads run.toml as the config). Everything else goes to the strict parser.
    """
    ours: list[str] = []
    petsc: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token.startswith("--") or len(token) < 3 or not token.startswith("-") \
                or _is_number(token):
            ours.append(token)
            continue
        petsc.append(token)
        if i < len(argv) and not argv[i].endswith(".toml") and (
                not argv[i].startswith("-") or _is_number(argv[i])):
            petsc.append(argv[i])
            i += 1
    return _parser().parse_args(ours), petsc


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set)


def _tree(problem: Problem, config: Config, comm: MPI.Comm) -> ClusterTree:
    net = problem.network
    return network_tree(problem.domain, net.W, net.b, config.solver.ordering, comm.size,
                        config.solver.leaf_size)


def _memory(comm: MPI.Comm) -> int:
    """Peak resident memory of the largest rank, in bytes. Collective."""
    return comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, op=MPI.MAX)


def _emit(comm: MPI.Comm, args: argparse.Namespace, result: dict) -> None:
    if args.json:
        print0(comm, json.dumps(result, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cmd_assemble(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """Assemble and write block rows collectively."""
    config = _config(args)
    which = tuple(m.strip() for m in args.matrices.split(",") if m.strip())
    bad = [m for m in which if m not in MATRICES]
    if bad:
        raise InputError(f"--matrices {args.matrices!r}: {', '.join(bad)} not in A, H, G")
    problem = build_problem(config)
    tree = _tree(problem, config, comm)
    timings: dict[str, float] = {}
    with log_stage("distgn: assembly"), timed(comm, timings, "seconds_assemble"):
        blocks = assemble_block_rows(problem, tree, comm.rank, which)
    path = args.output or config.output.path
    with timed(comm, timings, "seconds_write"):
        write_block_rows(path, blocks, comm, problem.domain.to_attrs())
    local_bytes = sum(m.nbytes for m in blocks.matrices.values())
    result = {"n": tree.n, "d": problem.domain.dim, "ranks": comm.size, "path": path,
              "matrices": list(which), **timings,
              "bytes_per_rank_max": comm.allreduce(local_bytes, op=MPI.MAX),
              "peak_memory_bytes": _memory(comm)}
    print0(comm, f"assembled {', '.join(which)} for n = {tree.n} (d = {problem.domain.dim}) on "
                 f"{comm.size} rank(s) in {timings['seconds_assemble']:.3f} s; wrote {path}")
    _emit(comm, args, result)
    return 0


def cmd_analyze(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """The matrix study over a list of n."""
    config = _config(args)
    sizes = config.analyze.sizes
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",")]
        except ValueError:
            raise InputError(f"--sizes {args.sizes!r} must be comma-separated integers") from None
    result = run_study(config, sizes, comm, args.output or config.output.path)
    _emit(comm, args, result)
    return 0


def cmd_solve(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """Assemble (or go matrix-free), factor and solve; write the solution in user order.

    ``solver.matrix = "A"`` solves the least-squares system ``A c = F`` (with the output bias if
    configured) and reports the fit error; "H" and "G" solve with right-hand sides
    ``int u h_i`` and ``int u h_i xhat``.
    """
    config = _config(args)
    cfg = config.solver
    if cfg.matrix not in ("A", "H", "G"):
        raise InputError(f"config key solver.matrix = {cfg.matrix!r} is not one of A, H, G")
    problem = build_problem(config)
    tree = _tree(problem, config, comm)
    timings: dict[str, float] = {}
    counted = CountingComm(comm)  # every byte the solve path sends is counted (--json)
    with log_stage("distgn: assembly"), timed(comm, timings, "seconds_assemble"):
        operator, blocks = build(problem, cfg, counted, cfg.matrix, tree)
    result: dict = {"n": tree.n, "d": problem.domain.dim, "ranks": comm.size, "solver": cfg.kind,
                    "matrix": cfg.matrix, "tol": cfg.tol, "matrix_free": cfg.matrix_free}
    if cfg.matrix == "A":
        fit = solve_output_weights(problem, blocks, operator, cfg, forward_error=True)
        c = np.empty(tree.n)
        c[tree.perm] = fit.c
        network = replace(problem.network, c=c, c0=fit.c0)
        result.update(fit.stats, backward_error=fit.backward_error, fit_l2_error=fit.l2_error)
        if fit.c0 is not None:
            result["c0"] = fit.c0
    else:
        rhs = blocks.moments if cfg.matrix == "G" else blocks.moments[:, -1]
        rhs = np.ascontiguousarray(rhs).reshape(-1)
        with factor(operator, cfg) as solver:
            x = solver.solve(rhs)
            result.update(solver.stats())
        result["backward_error"] = backward_error(operator, x, rhs, operator.norm_estimate())
        network = problem.network
        result["solution_norm"] = float(np.linalg.norm(operator.gather(x)))
    result.update(timings, **summary(counted), peak_memory_bytes=_memory(comm))
    save_state(config.output.path, comm, network, {}, result, to_dict(config))
    print0(comm, f"solved {cfg.matrix} (n = {tree.n}, {comm.size} rank(s)) with {cfg.kind}: "
                 f"backward error {result['backward_error']:.2e}"
                 + (f", fit L2 error {result['fit_l2_error']:.3e}" if "fit_l2_error" in result
                    else "") + f"; wrote {config.output.path}")
    _emit(comm, args, result)
    return 0


def cmd_train(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """Train with the configured method; checkpoints go to output.path."""
    config = _config(args)
    problem = build_problem(config)
    restart = None
    if args.restart:
        network, history, _ = load_state(args.restart)
        if network.W.shape[1] != problem.domain.dim:
            raise InputError(f"--restart {args.restart!r} holds a {network.W.shape[1]}D network")
        problem = replace(problem, network=network)
        restart = (network, history)
    result = train(problem, config, comm, restart)
    _emit(comm, args, result)
    return 0


def cmd_inspect(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """Print a summary of an HDF5 file."""
    if not Path(args.path).is_file():
        raise InputError(f"inspect: {args.path!r} does not exist")
    summary = inspect(args.path)
    if not args.json:
        for name, shape in summary["datasets"].items():
            print0(comm, f"{name:24s} {shape}")
        for key, value in {**summary["attrs"], **summary.get("result", {})}.items():
            print0(comm, f"{key:24s} {value}")
    _emit(comm, args, summary)
    return 0


COMMANDS = {"assemble": cmd_assemble, "analyze": cmd_analyze, "solve": cmd_solve,
            "train": cmd_train, "inspect": cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distgn`` command; returns the exit status (same on every rank)."""
    comm = MPI.COMM_WORLD
    argv = sys.argv[1:] if argv is None else argv

    def run() -> int:
        args, petsc_args = parse(argv)
        setup_logging(comm, args.verbose)
        if petsc_args:
            initialize(petsc_args)
        log.debug("distgn %s, %d rank(s), config %s", __version__, comm.size,
                  json.dumps(to_dict(_config(args))) if hasattr(args, "config") else "-")
        return COMMANDS[args.command](args, comm)

    try:
        return run_collectively(comm, run)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return int(exc.code or 0)
