"""Command-line interface: ``distgn {assemble, analyze, solve, train, inspect}``.

Every subcommand runs under ``mpiexec -n P`` (all ranks execute it; rank 0 prints), accepts
``--set section.key=value`` overrides, ``-o/--output``, ``--force`` and ``--json`` (one JSON object,
its results, as the last line of rank 0's stdout). Options starting with a single dash that argparse
does not know (e.g. ``-distgn_ksp_type minres -log_view``) go to PETSc's options database after a
check of their names (``check_petsc_options``).

Before any work, rank 0 checks the config, the output file (``io.check_output``: default
``<config stem>.<subcommand>.h5``, never a file of another subcommand or problem without
``--force``), the checkpoint file, the ``--restart`` file and the PETSc options, and broadcasts the
verdict, so a mistake costs no computation and every rank exits alike.
Exit codes (distgn.parallel): 0 success, 2 bad input or solver failure (one line on stderr),
3 an iterative solve did not converge, 75 interrupted by SIGTERM/SIGUSR1 after a checkpoint, 130
SIGINT, 1 internal error (the job is aborted so no rank hangs).
"""

from __future__ import annotations

import argparse
import difflib
import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distgn import __version__, io, signals
from distgn.analysis import plot_prefix, run_study
from distgn.assembly import MATRICES, assemble_block_rows
from distgn.config import Config, load_config
from distgn.errors import InputError
from distgn.fit import solve_output_weights
from distgn.operator import build, problem_tree
from distgn.parallel import log, print0, run_collectively, setup_logging, timed
from distgn.problem import build_problem, check_problem
from distgn.solvers import KINDS, backward_error, factor, initialize, log_stage
from distgn.solvers.traffic import CountingComm, summary
from distgn.training import train
from distgn.training.loop import checkpoint_path, stage_sizes

# Long options of distgn: given with one dash (``-json``) they would reach PETSc unnoticed.
LONG_OPTIONS = (
    "json",
    "verbose",
    "set",
    "output",
    "force",
    "restart",
    "sizes",
    "matrices",
    "version",
    "help",
)
# PETSc options distgn reads or passes on: ``-distgn_ksp_*`` and ``-distgn_pc_*`` (any KSP or PC
# option, distgn.solvers.krylov) and these global ones.
PETSC_PREFIXES = ("distgn_ksp_", "distgn_pc_")
PETSC_GLOBAL = (
    "log_view",
    "log_view_memory",
    "log_trace",
    "log_all",
    "options_left",
    "options_view",
    "malloc_debug",
    "malloc_dump",
    "malloc_view",
    "memory_view",
    "info",
    "on_error_abort",
    "check_pointer_intensity",
    "no_signal_handler",
    "fp_trap",
    "use_gpu_aware_mpi",
)


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one-line InputErrors and whose help prints on rank 0."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sub = self.prog.removeprefix("distgn").strip()
        raise InputError(f"{sub}: {message}" if sub else message)

    def _print_message(self, message: str, file: object = None) -> None:
        if MPI.COMM_WORLD.rank == 0:
            super()._print_message(message, file)  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distgn", description="Exact ReLU-network matrices, hierarchical solvers and SgGN."
    )
    parser.add_argument("--version", action="version", version=f"distgn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("config", nargs="?", help="TOML config file (defaults if omitted)")
            p.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="SECTION.KEY=VALUE",
                help="override a config key (repeatable)",
            )
            p.add_argument(
                "-o",
                "--output",
                help=f"output HDF5 file (default: output.path, else <config stem>.{name}.h5)",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="replace an output file of another subcommand or problem",
            )
        p.add_argument("--json", action="store_true", help="print results as one JSON line")
        p.add_argument("-v", "--verbose", action="store_true", help="debug output on rank 0")
        return p

    p = command("assemble", "assemble A, H, G and F exactly and write them to HDF5")
    p.add_argument("--matrices", default="A,H,G", help="comma-separated subset of A,H,G")
    p = command("analyze", "condition numbers, spectra and HSS ranks of A, H, G versus n")
    p.add_argument("--sizes", help="comma-separated n values (default: analyze.sizes)")
    command("solve", "solve A c = F (or H, G systems) with the configured solver")
    p = command("train", "fit the target by SgGN or a baseline optimizer")
    p.add_argument(
        "--restart",
        metavar="FILE",
        help="continue exactly from this checkpoint or finished run file",
    )
    p = command("inspect", "show the group tree of a distgn HDF5 file", config=False)
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
    A long distgn option with one dash (``-json``) is an InputError.
    """
    ours: list[str] = []
    petsc: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if (
            token.startswith("--")
            or len(token) < 3
            or not token.startswith("-")
            or _is_number(token)
        ):
            ours.append(token)
            continue
        if token[1:] in LONG_OPTIONS:
            raise InputError(f"option {token} has one dash: did you mean -{token}?")
        petsc.append(token)
        if (
            i < len(argv)
            and not argv[i].endswith(".toml")
            and (not argv[i].startswith("-") or _is_number(argv[i]))
        ):
            petsc.append(argv[i])
            i += 1
    return _parser().parse_args(ours), petsc


def check_petsc_options(options: list[str], where: str = "") -> None:
    """Raise InputError naming the first option distgn does not know (``PETSC_PREFIXES``,
    ``PETSC_GLOBAL``), with the closest known name; ``where`` names the source in the
    message."""
    for token in options:
        if not token.startswith("-") or _is_number(token):
            continue
        name = token[1:]
        if name.startswith(PETSC_PREFIXES) or name in PETSC_GLOBAL:
            continue
        known = [
            *PETSC_GLOBAL,
            "distgn_ksp_type",
            "distgn_pc_type",
            "distgn_ksp_rtol",
            "distgn_ksp_max_it",
            "distgn_ksp_monitor",
            "distgn_pc_hss_tol",
            "distgn_ksp_norm_type",
            *LONG_OPTIONS,
        ]
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"; did you mean {'--' if close and close[0] in LONG_OPTIONS else '-'}{close[0]}?"
            if close
            else ""
        )
        raise InputError(
            f"unknown option {token}{where} (PETSc options distgn uses: "
            f"-distgn_ksp_*, -distgn_pc_*, -log_view, ...){hint}"
        )


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, args.set)
    check_petsc_options(config.solver.petsc_options.split(), " in solver.petsc_options")
    if config.solver.kind not in KINDS:
        raise InputError(
            f"config key solver.kind = {config.solver.kind!r} is not one of {', '.join(KINDS)}"
        )
    return config


def output_path(args: argparse.Namespace, config: Config) -> str:
    """``-o``, else ``output.path``, else ``<config stem>.<subcommand>.h5`` (``run`` without a
    config file) in the current folder."""
    if args.output:
        return args.output
    if config.output.path:
        return config.output.path
    stem = Path(args.config).stem if args.config else "run"
    return f"{stem}.{args.command}.h5"


def precheck(comm: MPI.Comm, work: Callable[[], object]) -> object:
    """Run the checks ``work`` on rank 0 and broadcast the outcome: its value, or the same
    InputError on every rank. Collective."""
    outcome: tuple[bool, object] = (True, None)
    if comm.rank == 0:
        try:
            outcome = (True, work())
        except InputError as exc:
            outcome = (False, str(exc))
    ok, value = comm.bcast(outcome, root=0)
    if not ok:
        raise InputError(value)
    return value


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


def _prepare(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> tuple[Config, str]:
    """The config and the output path, checked on rank 0 before any work. Collective."""

    def work() -> str:
        config = _config(args)
        check_petsc_options(petsc)
        check_problem(config)  # the network itself is checked where it is built (collectively)
        path = output_path(args, config)
        io.check_output(
            path,
            MPI.COMM_SELF,
            args.command,
            config,
            args.force,
            "-o" if args.output else "output.path",
        )
        return path

    path = precheck(comm, work)
    return _config(args), str(path)


def cmd_assemble(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> int:
    """Assemble and write block rows collectively."""
    config, path = _prepare(args, comm, petsc)
    which = tuple(m.strip() for m in args.matrices.split(",") if m.strip())
    bad = [m for m in which if m not in MATRICES]
    if bad or not which:
        raise InputError(
            f"--matrices {args.matrices!r}: {', '.join(bad) or 'nothing'} not in A, H, G"
        )
    problem = build_problem(config)
    tree = problem_tree(problem, config.solver, comm)
    timings: dict[str, float] = {}
    with log_stage("distgn: assembly"), timed(comm, timings, "seconds_assemble"):
        blocks = assemble_block_rows(problem, tree, comm.rank, which)
    attrs = io.stamp(
        config,
        "assemble",
        comm,
        target=problem.target.name,
        matrices=",".join(which),
        **problem.domain.to_attrs(),
    )
    with timed(comm, timings, "seconds_write"):
        io.write_block_rows(path, blocks, comm, attrs)
    local_bytes = sum(m.nbytes for m in blocks.matrices.values())
    result = {
        "n": tree.n,
        "d": problem.domain.dim,
        "ranks": comm.size,
        "path": path,
        "matrices": list(which),
        **timings,
        "bytes_per_rank_max": comm.allreduce(local_bytes, op=MPI.MAX),
        "peak_memory_bytes": _memory(comm),
    }
    print0(
        comm,
        f"assembled {', '.join(which)} for n = {tree.n} (d = {problem.domain.dim}) on "
        f"{comm.size} rank(s) in {timings['seconds_assemble']:.3f} s; wrote {path}",
    )
    _emit(comm, args, result)
    return 0


def cmd_analyze(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> int:
    """The matrix study over a list of n."""
    config, path = _prepare(args, comm, petsc)
    sizes = config.analyze.sizes
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",")]
        except ValueError:
            raise InputError(f"--sizes {args.sizes!r} must be comma-separated integers") from None
    if comm.rank == 0:
        log.debug("plots: %s.png", plot_prefix(config, path))
    counted = CountingComm(comm)  # every byte the study sends is counted (--json)
    result = run_study(config, sizes, counted, path, io.stamp(config, "analyze", comm))
    result.update(summary(counted), peak_memory_bytes=_memory(comm))
    _emit(comm, args, result)
    return 0


def cmd_solve(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> int:
    """Assemble (or go matrix-free), factor and solve; write the solution in user order.

    ``solver.matrix = "A"`` solves the least-squares system ``A c = F`` (with the output bias if
    configured) and reports the fit error; "H" and "G" solve with right-hand sides
    ``int u h_i`` and ``int u h_i xhat``. A 1D network is split by rank (``build_problem`` with
    the communicator): each rank builds, solves for and writes only its neurons unless the
    neuron basis needs them all.
    """
    config, path = _prepare(args, comm, petsc)
    cfg = config.solver
    timings: dict[str, float] = {}
    counted = CountingComm(comm)  # every byte the solve path sends is counted (--json)
    with log_stage("distgn: network"), timed(comm, timings, "seconds_network"):
        problem = build_problem(config, counted)
        tree = problem_tree(problem, cfg, counted)
    with log_stage("distgn: assembly"), timed(comm, timings, "seconds_assemble"):
        operator, blocks = build(problem, cfg, counted, cfg.matrix, tree)
    tree = blocks.tree  # the whole tree when the neuron basis gathered the network
    result: dict = {
        "n": tree.n,
        "d": problem.domain.dim,
        "ranks": comm.size,
        "solver": cfg.kind,
        "matrix": cfg.matrix,
        "tol": cfg.tol,
        "matrix_free": cfg.matrix_free,
    }
    c = c0 = None
    if cfg.matrix == "A":
        fit = solve_output_weights(problem, blocks, operator, cfg, forward_error=True)
        c, c0 = fit.c, fit.c0
        result.update(fit.stats, backward_error=fit.backward_error, fit_l2_error=fit.l2_error)
        # the 1D value-coordinate system is assembled inside the least-squares solve
        timings["seconds_assemble"] += fit.stats.get("seconds_assemble_nodal", 0.0)
        if fit.c0 is not None:
            result["c0"] = fit.c0
    else:
        rhs = blocks.moments if cfg.matrix == "G" else blocks.moments[:, -1]
        rhs = np.ascontiguousarray(rhs).reshape(-1)
        with factor(operator, cfg) as solver:
            x = solver.solve(rhs)
            result.update(solver.stats())
        result["backward_error"] = backward_error(operator, x, rhs, operator.norm_estimate())
        result["solution_norm"] = float(np.sqrt(comm.allreduce(float(x @ x))))
    result.update(timings, **summary(counted), peak_memory_bytes=_memory(comm))
    lo, hi = tree.rank_range(comm.rank)
    first = blocks.first
    rows = {"W": blocks.W[lo - first : hi - first], "b": blocks.b[lo - first : hi - first]}
    if c is not None:
        rows["c"] = c
    result = comm.bcast(result, root=0)  # the attributes every rank writes
    _write_solution(path, comm, config, tree.users(lo, hi), rows, c0, result)
    print0(
        comm,
        f"solved {cfg.matrix} (n = {tree.n}, {comm.size} rank(s)) with {cfg.kind}: "
        f"backward error {result['backward_error']:.2e}"
        + (f", fit L2 error {result['fit_l2_error']:.3e}" if "fit_l2_error" in result else "")
        + f"; wrote {path}",
    )
    _emit(comm, args, result)
    return 0


def _write_solution(
    path: str,
    comm: MPI.Comm,
    config: Config,
    users: np.ndarray,
    rows: dict[str, np.ndarray],
    c0: float | None,
    result: dict,
) -> None:
    """The solve file: ``network/*`` in user order, from each rank's rows (``users``: their user
    indices), and ``result`` attributes. Collective (parallel HDF5 with more than one rank)."""
    n = comm.allreduce(users.size)
    d = rows["W"].shape[1]

    def fill(fh: object) -> None:
        group = fh.create_group("network")
        io.write_rows(group, comm, n, users, rows)
        if c0 is not None:
            group.create_dataset("c0", data=float(c0))
        io.write_attrs(fh.create_group("result"), result)

    io.write_file(path, comm, io.stamp(config, "solve", comm, n=n, d=d), fill, parallel=True)


def cmd_train(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> int:
    """Train with the configured method: checkpoints to checkpoint.path, the run to the output;
    ``--restart`` continues a checkpoint or finished run exactly."""

    def work() -> tuple[str, str, io.RunState | None]:
        config = _config(args)
        check_petsc_options(petsc)
        state = io.read_run(args.restart) if args.restart else None
        if state is not None:
            io.check_same_problem(state, config)
        build_problem(config)
        stage_sizes(config)
        path = output_path(args, config)
        io.check_output(
            path, MPI.COMM_SELF, "train", config, args.force, "-o" if args.output else "output.path"
        )
        checkpoint = checkpoint_path(config, path)
        if checkpoint == path:
            raise InputError(f"checkpoint.path = {checkpoint!r} is the output file; choose another")
        io.check_output(checkpoint, MPI.COMM_SELF, "train", config, args.force, "checkpoint.path")
        return path, checkpoint, state

    # rank 0 reads and verifies the --restart file; the other ranks get its state
    path, checkpoint, restart = precheck(comm, work)
    config = _config(args)
    problem = build_problem(config)
    counted = CountingComm(comm)  # every byte the run sends is counted (--json)
    with signals.deferred():
        result = train(problem, config, counted, restart, output=path)
    result["checkpoint"] = checkpoint
    result.update(summary(counted), peak_memory_bytes=_memory(comm))
    _emit(comm, args, result)
    return 0


def cmd_inspect(args: argparse.Namespace, comm: MPI.Comm, petsc: list[str]) -> int:
    """Print the group tree of an HDF5 file, with the attributes of every group."""
    precheck(comm, lambda: check_petsc_options(petsc))
    summary = precheck(comm, lambda: io.inspect(args.path))
    if not args.json:
        _print_tree(comm, summary, "/")
    _emit(comm, args, summary)
    return 0


def _print_tree(comm: MPI.Comm, node: dict, name: str, indent: str = "") -> None:
    print0(comm, f"{indent}{name}")
    for key, value in node["attrs"].items():
        text = str(value)
        if "\n" in text or len(text) > 100:
            text = text.replace("\n", " ")[:97] + "..."
        print0(comm, f"{indent}  @{key} = {text}")
    for key, info in node["datasets"].items():
        print0(
            comm,
            f"{indent}  {key}  {tuple(info['shape'])} {info['dtype']}  checksum {info['checksum']}",
        )
    for key, child in node["groups"].items():
        _print_tree(comm, child, f"{key}/", indent + "  ")


COMMANDS = {
    "assemble": cmd_assemble,
    "analyze": cmd_analyze,
    "solve": cmd_solve,
    "train": cmd_train,
    "inspect": cmd_inspect,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distgn`` command; returns the exit status (same on every rank)."""
    comm = MPI.COMM_WORLD
    argv = sys.argv[1:] if argv is None else argv

    def run() -> int:
        args, petsc_args = parse(argv)
        setup_logging(comm, args.verbose)
        if petsc_args:
            initialize(petsc_args)
        log.debug("distgn %s, %d rank(s)", __version__, comm.size)
        return COMMANDS[args.command](args, comm, petsc_args)

    try:
        return run_collectively(comm, run)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return int(exc.code or 0)
