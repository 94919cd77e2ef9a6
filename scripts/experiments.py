"""Reference experiments of SgGN training: SgGN versus Adam, BFGS and Levenberg-Marquardt.

Every method starts from the same network (uniform start) and the same least-squares c, on the
same exact assembly (distgn.training). ``run`` trains and stores each run's result, subsampled
history and (SgGN) the networks before and after in ``benchmarks/training/results_{1,2}d.json``
(incremental: runs already there are skipped unless ``--force``); ``report`` writes the tables
(``benchmarks/training/tables.md``) and the figures (``benchmarks/training/*.png``) from it.

    python scripts/experiments.py run --dim 1
    python scripts/experiments.py run --dim 2
    python scripts/experiments.py report
    python scripts/experiments.py pair     # the jump-pair resolution table
    python scripts/experiments.py profile --n 512 1024   # 2D SgGN iteration profile (disk)
    python scripts/experiments.py diagnose   # SgGN error versus n, three settings (docs/sggn.md)
    python scripts/experiments.py merge --dim 2 FILE   # runs of a job run with --store FILE
    python scripts/experiments.py hessian --target disk --n 256   # where SgGN stops (docs/sggn.md)

Budgets (``budget``): SgGN (``SGGN_SETTINGS``) runs to convergence or its caps; every baseline
then gets SgGN's wall time on the same problem. Adam's learning rate is the best of
``ADAM_RATES`` (every size).
Collective when run under mpiexec (rank 0 writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distgn.config import load_config
from distgn.errors import SolverError
from distgn.io import load_state
from distgn.network import Network
from distgn.parallel import setup_logging
from distgn.problem import build_problem
from distgn.training import train

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "training"


def results_file(dim: int) -> Path:
    """Where the runs of one dimension are stored (one file each, so both can run at once)."""
    return OUT / f"results_{dim}d.json"


TARGETS = {1: ("step", "tanh_layer", "power", "sine"), 2: ("line_jump", "disk")}
SIZES = {1: (8, 16, 32, 64, 128, 256), 2: (16, 64, 256, 1024)}
DOMAIN = {
    1: ["domain.kind=interval", "domain.bounds=[0.0, 1.0]"],
    2: ["domain.kind=box", "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]"],
}
METHODS = ("sggn", "adam", "bfgs", "lm")
ADAM_RATES = {1: (1e-2, 1e-3, 1e-4), 2: (1e-2, 1e-3, 1e-4)}
SWEEP_UP_TO = {1: 256, 2: 256}
# SgGN's settings beyond the defaults: basin hopping (docs/sggn.md, section 2e), three hops in
# 1D, 32 in 2D, where the grid's caps leave room for them (``budget``); in 2D also staged growth
# from n = 16 (section 2f): the hops spent at n = 16, copies 0.03 apart, each basin before the
# last stage capped at 400 iterations.
SGGN_SETTINGS = {
    1: ["train.hops=3"],
    2: ["train.hops=32", "train.grow_from=16", "train.grow_spread=0.03", "train.stage_iter=400"],
}


def budget(dim: int, n: int, method: str, results: dict, target: str) -> dict:
    """``max_iter`` and ``max_seconds`` of a run: SgGN up to 500 iterations and 60 s (1D) or
    20000 iterations and 300 s (2D: room for the hops at n = 16); every baseline gets the wall time
    SgGN took on the same problem (at least 1 s), so that methods are compared at equal wall
    time."""
    if method == "sggn":
        return (
            {"max_iter": 500, "max_seconds": 60}
            if dim == 1
            else {"max_iter": 20000, "max_seconds": 300}
        )
    sggn = results[key(dim, target, n, "sggn")]["result"]
    return {"max_iter": 10**6, "max_seconds": max(float(sggn["seconds"]), 1.0)}


def key(dim: int, target: str, n: int, method: str, rate: float | None = None) -> str:
    return f"{dim}d/{target}/{n}/{method}" + (f"/{rate:g}" if rate else "")


def subsample(history: dict, points: int = 400) -> dict:
    """At most ``points`` entries of iteration, loss, seconds (log-spaced, first and last kept)."""
    count = len(history["loss"])
    index = np.unique(
        np.concatenate(
            [[0, count - 1], np.round(np.geomspace(1, max(count - 1, 1), points)).astype(int)]
        )
    )
    index = index[index < count]
    return {
        name: [float(v) for v in np.asarray(history[name])[index]]
        for name in ("iteration", "loss", "seconds", "l2_error")
    }


def saved_result(path: Path) -> dict:
    """The result attributes of a run file as plain JSON values."""
    result = load_state(str(path))[2]
    return {
        name: value.item() if hasattr(value, "item") else value for name, value in result.items()
    }


def network_json(network: Network) -> dict:
    return {
        "W": network.W.tolist(),
        "b": network.b.tolist(),
        "c": network.c.tolist(),
        "c0": network.c0,
    }


def run_one(
    comm: MPI.Comm,
    dim: int,
    target: str,
    n: int,
    method: str,
    rate: float | None,
    work: Path,
    limits: dict,
    sggn_settings: list[str] | None = None,
) -> dict:
    """Train one configuration; return its record for results.json. SgGN runs with
    ``sggn_settings`` (default: the grid's, ``SGGN_SETTINGS``)."""
    path = work / f"{key(dim, target, n, method, rate).replace('/', '-')}.h5"
    overrides = DOMAIN[dim] + [
        f"target.name={target}",
        f"network.n={n}",
        "network.init=uniform",
        "solver.kind=dense",
        f"output.path={path}",
        f"train.max_iter={limits['max_iter']}",
        f"train.max_seconds={limits['max_seconds']}",
        "train.log_every=100",
        "train.checkpoint_every=0",
        f"train.method={method}",
        "train.tol=1e-12",
    ]
    if rate is not None:
        overrides.append(f"train.learning_rate={rate}")
    if method == "sggn":
        overrides += SGGN_SETTINGS[dim] if sggn_settings is None else sggn_settings
    config = load_config(None, overrides)
    problem = build_problem(config)
    try:
        result = train(problem, config, comm)
    except SolverError:  # a failed solver: the run file holds the run and its stop reason
        result = saved_result(path)
    network, history, _ = load_state(str(path))
    record = {
        "dim": dim,
        "target": target,
        "n": n,
        "method": method,
        "learning_rate": rate,
        "result": result,
        "history": subsample(history),
    }
    if method == "sggn":
        start = problem.network
        record["start"] = network_json(Network(start.W, start.b, np.zeros(start.n)))
        record["final"] = network_json(network)
    return record


def best_rate(results: dict, dim: int, target: str, n: int) -> float:
    """Adam's rate: the best of the sweep at n (swept sizes) or at the largest swept size."""
    swept = max(m for m in SIZES[dim] if m <= SWEEP_UP_TO[dim] and m <= n)
    losses = {
        rate: results[key(dim, target, swept, "adam", rate)]["result"]["loss"]
        for rate in ADAM_RATES[dim]
        if key(dim, target, swept, "adam", rate) in results
    }
    return min(losses, key=losses.get)


def command_run(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    setup_logging(comm)
    store = results_file(args.dim)
    results = json.loads(store.read_text()) if store.exists() else {}
    fresh: dict = {}  # this job's runs; with --store they go to that file (see ``merge``)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for target in args.targets or TARGETS[args.dim]:
        for n in args.sizes or SIZES[args.dim]:
            for method in args.methods:
                sweep = method == "adam" and n <= SWEEP_UP_TO[args.dim]
                rates = (
                    ADAM_RATES[args.dim]
                    if sweep
                    else (
                        (best_rate(results, args.dim, target, n),) if method == "adam" else (None,)
                    )
                )
                for rate in rates:
                    name = key(args.dim, target, n, method, rate)
                    if name in results and not args.force:
                        continue
                    record = run_one(
                        comm,
                        args.dim,
                        target,
                        n,
                        method,
                        rate,
                        work,
                        budget(args.dim, n, method, results, target),
                    )
                    results[name] = fresh[name] = record
                    if comm.rank == 0:
                        if args.store:
                            Path(args.store).write_text(json.dumps(fresh))
                        else:
                            store.write_text(json.dumps(results))
                        res = record["result"]
                        print(
                            f"{name}: rel L2 {res['relative_l2_error']:.3e}, "
                            f"{res['iterations']} it, {res['seconds']:.1f}s, "
                            f"{res['stop_reason']}",
                            flush=True,
                        )


# ---------------------------------------------------------------------------------------------
# Report


LABELS = {"sggn": "SgGN", "adam": "Adam", "bfgs": "BFGS", "lm": "LM"}
COLOURS = {"sggn": "C0", "adam": "C2", "bfgs": "C3", "lm": "C4"}


def chosen(results: dict, dim: int, target: str, n: int) -> dict[str, dict]:
    """One record per method (Adam: its best learning rate)."""
    out = {}
    for method in METHODS:
        if method == "adam":
            runs = [
                r for k, r in results.items() if k.startswith(key(dim, target, n, "adam") + "/")
            ]
            if runs:
                out[method] = min(runs, key=lambda r: r["result"]["loss"])
        elif key(dim, target, n, method) in results:
            out[method] = results[key(dim, target, n, method)]
    return out


def _seconds_to(result: dict, decade: str) -> str:
    """When the run first reached the relative error ``decade`` ("-" if never)."""
    seconds = result.get("seconds_to", {})
    if isinstance(seconds, str):
        seconds = json.loads(seconds)
    return f"{seconds[decade]:.1f}" if decade in seconds else "-"


# Relative difference under which SgGN's error and the best baseline's count as a tie.
TIE = 1e-4


def tables(results: dict) -> str:
    lines = ["<!-- written by scripts/experiments.py report -->"]
    for dim in (1, 2):
        for target in TARGETS[dim]:
            sizes = [n for n in SIZES[dim] if chosen(results, dim, target, n)]
            if not sizes:
                continue
            lines += [
                "",
                f"### {dim}D `{target}`",
                "",
                "relative L2 error / iterations / seconds (stop reason); seconds to a "
                "relative error of 1e-2, 1e-3, 1e-4 ('-': not reached). SgGN: "
                + (" ".join(SGGN_SETTINGS[dim]) or "defaults")
                + ". Baselines ran for SgGN's wall time; Adam: the best of learning rates "
                + ", ".join(f"{rate:g}" for rate in ADAM_RATES[dim])
                + ".",
                "",
                "| n | "
                + " | ".join(LABELS[m] for m in METHODS)
                + " | SgGN <= best baseline (else SgGN / best; tie: within "
                + f"{TIE:g}, the same local minimum) |",
                "|---|" + "---|" * (len(METHODS) + 1),
            ]
            for n in sizes:
                runs = chosen(results, dim, target, n)
                cells = []
                for method in METHODS:
                    if method not in runs:
                        cells.append("-")
                        continue
                    res = runs[method]["result"]
                    rate = f", lr {runs[method]['learning_rate']:g}" if method == "adam" else ""
                    cells.append(
                        f"**{res['relative_l2_error']:.2e}** / {res['iterations']} / "
                        f"{res['seconds']:.1f}s ({res['stop_reason']}{rate}); "
                        + " ".join(_seconds_to(res, f"1e-{k}") for k in (2, 3, 4))
                    )
                errors = {m: runs[m]["result"]["relative_l2_error"] for m in runs}
                baselines = [errors[m] for m in errors if m != "sggn"]
                ratio = errors.get("sggn", np.inf) / min(baselines) if baselines else np.nan
                verdict = (
                    "-"
                    if not baselines
                    else "yes"
                    if ratio <= 1
                    else f"tie (x{ratio:.6f})"
                    if ratio <= 1 + TIE
                    else f"no (x{ratio:.2f})"
                )
                lines.append(f"| {n} | " + " | ".join(cells) + f" | {verdict} |")
            lines += ["", growth_line(results, dim, target, sizes)]
    return "\n".join(lines) + "\n"


def growth_line(results: dict, dim: int, target: str, sizes: list[int]) -> str:
    """How far SgGN's error rises with n: the largest ratio of its error at n to its lowest
    error at a smaller n (at most 2 is "non-increasing within a factor 2")."""
    errors = [
        results[key(dim, target, n, "sggn")]["result"]["relative_l2_error"]
        if key(dim, target, n, "sggn") in results
        else np.nan
        for n in sizes
    ]
    ratios = [errors[i] / np.nanmin(errors[:i]) for i in range(1, len(errors))]
    if not ratios or np.all(np.isnan(ratios)):
        return "SgGN's error against n: fewer than two sizes."
    worst = int(np.nanargmax(ratios))
    return (
        f"SgGN's error at n over its lowest at a smaller n: largest x{ratios[worst]:.2f} "
        f"(n = {sizes[worst + 1]}); non-increasing within a factor 2: "
        f"{'yes' if ratios[worst] <= 2 else 'no'}."
    )


def convergence_figure(results: dict, dim: int, target: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    sizes = [n for n in SIZES[dim] if chosen(results, dim, target, n)]
    fig, axes = plt.subplots(2, len(sizes), figsize=(3.2 * len(sizes), 6), squeeze=False)
    for column, n in enumerate(sizes):
        for method, record in chosen(results, dim, target, n).items():
            history = record["history"]
            loss = np.maximum(history["loss"], 1e-32)
            label = LABELS[method] + (
                f" (lr {record['learning_rate']:g})" if method == "adam" else ""
            )
            iterations = np.maximum(history["iteration"], 1)
            axes[0, column].loglog(iterations, loss, color=COLOURS[method], label=label)
            axes[1, column].loglog(
                np.maximum(history["seconds"], 1e-3), loss, color=COLOURS[method]
            )
        axes[0, column].set_title(f"n = {n}")
        axes[0, column].set_xlabel("iteration")
        axes[1, column].set_xlabel("seconds")
    axes[0, 0].set_ylabel("loss J")
    axes[1, 0].set_ylabel("loss J")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{dim}D {target}: loss versus iteration (top) and wall time (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fit_figure(results: dict, dim: int, target: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    from distgn.domain import box, interval
    from distgn.targets import make_target

    sizes = [
        n
        for n in ((16, 64, 256) if dim == 1 else SIZES[2])
        if key(dim, target, n, "sggn") in results
    ]
    if not sizes:
        return
    domain = interval(0.0, 1.0) if dim == 1 else box([[0.0, 1.0], [0.0, 1.0]])
    u = make_target(target, domain)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        record = results[key(dim, target, n, "sggn")]
        start = Network(
            **{k: np.asarray(v) if k != "c0" else v for k, v in record["start"].items()}
        )
        final = Network(
            **{k: np.asarray(v) if k != "c0" else v for k, v in record["final"].items()}
        )
        rel = record["result"]["relative_l2_error"]
        if dim == 1:
            x = np.linspace(0.0, 1.0, 4001)[:, None]
            ax.plot(x[:, 0], u(x), color="0.6", lw=3, label="target u")
            ax.plot(x[:, 0], final.evaluate(x), color="C0", lw=1, label="SgGN fit")
            low = min(u(x).min(), final.evaluate(x).min())
            ax.plot(
                start.breakpoints(),
                np.full(n, low - 0.08),
                "|",
                color="0.3",
                label="breakpoints before",
            )
            active = final.c != 0
            ax.plot(
                final.breakpoints()[active],
                np.full(active.sum(), low - 0.16),
                "|",
                color="C3",
                label="after",
            )
            ax.set_xlim(0, 1)
        else:
            x = np.linspace(0, 1, 201)
            X, Y = np.meshgrid(x, x)
            values = final.evaluate(np.column_stack([X.ravel(), Y.ravel()])).reshape(X.shape)
            ax.contourf(X, Y, values, levels=20, cmap="viridis")
            for network, colour, width in ((start, "white", 0.3), (final, "red", 0.6)):
                for w, b, c in zip(network.W, network.b, network.c, strict=True):
                    if network is final and c == 0:
                        continue
                    _draw_line(ax, w, b, colour, width)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
        ax.set_title(f"n = {n}: relative L2 error {rel:.1e}")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{dim}D {target}: SgGN fit, "
        + (
            "breakpoints before (grey) and after (red)"
            if dim == 1
            else "lines before (white) and after (red) over the fit"
        )
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _draw_line(ax, w: np.ndarray, b: float, colour: str, width: float) -> None:
    """The part of the line ``w . x + b = 0`` inside the unit square."""
    t = np.linspace(-2, 2, 2)
    point = -b * w / np.dot(w, w)
    direction = np.array([-w[1], w[0]])
    ax.plot(point[0] + t * direction[0], point[1] + t * direction[1], color=colour, lw=width)


def command_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    results = {}
    for dim in (1, 2):
        if results_file(dim).exists():
            results.update(json.loads(results_file(dim).read_text()))
    (OUT / "tables.md").write_text(tables(results))
    if (OUT / "diagnosis.json").exists():
        diagnosis_report(json.loads((OUT / "diagnosis.json").read_text()))
    for dim in (1, 2):
        for target in TARGETS[dim]:
            if any(k.startswith(f"{dim}d/{target}/") for k in results):
                convergence_figure(results, dim, target, OUT / f"convergence_{dim}d_{target}.png")
                fit_figure(results, dim, target, OUT / f"fit_{dim}d_{target}.png")


def command_merge(args: argparse.Namespace) -> None:
    store = results_file(args.dim)
    results = json.loads(store.read_text()) if store.exists() else {}
    for name in args.files:
        results.update(json.loads(Path(name).read_text()))
    store.write_text(json.dumps(results))


def command_pair(args: argparse.Namespace) -> None:
    """How small the width delta of a ReLU pair resolving a jump can get in double precision.

    Uniform breakpoints k/32 (k != 16) plus a pair at 0.5 -+ delta/2, step target: the best fit
    has ``J ~ delta``; the table compares the c-solve (deflation, dense Cholesky) with that line.
    """
    from distgn.domain import interval
    from distgn.problem import Problem
    from distgn.targets import make_target
    from distgn.training.objective import Context
    from distgn.training.sggn import solve_output

    domain = interval(0.0, 1.0)
    config = load_config(None, ["solver.kind=dense"])
    slope = None
    print("| delta | J (c-solve) | J expected ~ delta | deflated | rejected |")
    print("|---|---|---|---|---|")
    for delta in np.logspace(-3, -12, 10):
        t = np.concatenate(
            [np.arange(32)[np.arange(32) != 16] / 32, [0.5 - delta / 2, 0.5 + delta / 2]]
        )
        network = Network(np.ones((t.size, 1)), -t, np.zeros(t.size))
        problem = Problem(domain, make_target("step", domain), network)
        out = solve_output(
            Context(problem, MPI.COMM_SELF, config.solver), network, np.ones(t.size, dtype=bool)
        )
        slope = out.loss / delta if slope is None else slope
        print(
            f"| {delta:.0e} | {out.loss:.3e} | {slope * delta:.3e} | {out.deflated} | "
            f"{out.rejected} |"
        )


DIAGNOSIS_TARGETS = ("step", "tanh_layer", "power", "sine")
# Settings compared by ``diagnose`` (label: config overrides): the GN step over all neurons (the
# old default), without the neurons of small |c_i|, and with reseating of wasted neurons (default).
DIAGNOSIS_SETTINGS = {
    "drop_tol 1e-10": ["train.drop_tol=1e-10", "train.reseat=false", "train.damping=0"],
    "drop_tol 1e-4": ["train.drop_tol=1e-4", "train.reseat=false", "train.damping=0"],
    "drop_tol 1e-4, reseat": ["train.drop_tol=1e-4", "train.reseat=true", "train.damping=0"],
    "drop_tol 1e-4, reseat, damping": [
        "train.drop_tol=1e-4",
        "train.reseat=true",
        "train.damping=1e-3",
    ],
}


def diagnosis_report(runs: dict) -> None:
    """``diagnosis.md`` (table) and ``diagnosis.png`` from the runs of ``command_diagnose``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "<!-- written by scripts/experiments.py diagnose / report -->",
        "",
        "SgGN, 1D, uniform start, dense solver, at most 300 iterations: relative L2 error "
        "(stop reason), mean step length, loss evaluations per iteration.",
        "",
        "| target | n | " + " | ".join(DIAGNOSIS_SETTINGS) + " |",
        "|---|---|" + "---|" * len(DIAGNOSIS_SETTINGS),
    ]
    for target in DIAGNOSIS_TARGETS:
        for n in SIZES[1]:
            cells = []
            for setting in DIAGNOSIS_SETTINGS:
                run = runs.get(f"{target}/{n}/{setting}")
                cells.append(
                    "-"
                    if run is None
                    else f"{run['result']['relative_l2_error']:.2e} "
                    f"({run['result']['stop_reason']}), step {run['mean_step']:.2g}, "
                    f"{run['evaluations']:.1f} evaluations"
                )
            lines.append(f"| {target} | {n} | " + " | ".join(cells) + " |")
    (OUT / "diagnosis.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for target, colour in zip(DIAGNOSIS_TARGETS, ("C0", "C1", "C2", "C3"), strict=True):
        for setting, style in zip(DIAGNOSIS_SETTINGS, (":", "--", "-.", "-"), strict=True):
            sizes = [n for n in SIZES[1] if f"{target}/{n}/{setting}" in runs]
            picked = [runs[f"{target}/{n}/{setting}"] for n in sizes]
            label = f"{target}, {setting}"
            axes[0].loglog(
                sizes,
                [r["result"]["relative_l2_error"] for r in picked],
                style,
                color=colour,
                marker="o",
                label=label,
            )
            axes[1].loglog(sizes, [r["mean_step"] for r in picked], style, color=colour, marker="o")
            axes[2].semilogx(
                sizes, [r["evaluations"] for r in picked], style, color=colour, marker="o"
            )
    for ax, title in zip(
        axes,
        (
            "relative L2 error after <= 300 iterations",
            "mean step length",
            "loss evaluations per iteration",
        ),
        strict=True,
    ):
        ax.set_xlabel("n")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(OUT / "diagnosis.png", dpi=90)
    plt.close(fig)


def command_diagnose(args: argparse.Namespace) -> None:
    """SgGN's final error versus n on the 1D reference set in the ``DIAGNOSIS_SETTINGS``: runs
    (300 iterations at most, one rank, dense solver) into ``benchmarks/training/diagnosis.json``,
    the figure ``diagnosis.png`` (error, mean step, evaluations per iteration versus n)."""
    comm = MPI.COMM_SELF
    store = OUT / "diagnosis.json"
    runs = json.loads(store.read_text()) if store.exists() else {}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for setting, overrides in DIAGNOSIS_SETTINGS.items():
        for target in DIAGNOSIS_TARGETS:
            for n in SIZES[1]:
                name = f"{target}/{n}/{setting}"
                if name in runs:
                    continue
                path = work / "diagnose.h5"
                config = load_config(
                    None,
                    DOMAIN[1]
                    + [
                        f"target.name={target}",
                        f"network.n={n}",
                        "network.init=uniform",
                        "solver.kind=dense",
                        f"output.path={path}",
                        "train.max_iter=300",
                        "train.log_every=1000",
                        "train.checkpoint_every=0",
                    ]
                    + overrides,
                )
                try:
                    result = train(build_problem(config), config, comm)
                except SolverError:
                    result = saved_result(path)
                _, history, _ = load_state(str(path))
                runs[name] = {
                    "result": result,
                    "mean_step": float(np.nanmean(history["step"][1:])),
                    "evaluations": float(np.nanmean(history["evaluations"][1:])),
                }
                store.write_text(json.dumps(runs))
                print(name, f"{result['relative_l2_error']:.3e}", result["stop_reason"], flush=True)
    diagnosis_report(runs)


PROFILE_FUNCTIONS = {  # (file, function) of the steps timed by ``profile``
    "target moments": ("assembly/__init__.py", "target_moments"),
    "pair integrals": ("assembly/__init__.py", "pair_integrals"),
    "loss and gradient": ("objective.py", "loss_and_gradient"),
    "line search": ("sggn.py", "_line_search"),
    "c-solve": ("sggn.py", "solve_output"),
    "solve with G": ("sggn.py", "gn_direction"),
}


def command_profile(args: argparse.Namespace) -> None:
    """Seconds per SgGN iteration on the 2D disk target (one rank), and where they go.

    Runs ``train`` for ``--iterations`` iterations at each n, once as is and once under cProfile,
    and appends one row per n to ``benchmarks/training/profile.md`` under the label ``--label``:
    wall seconds per iteration (from the history of the first run, after the start), objective
    evaluations per iteration in the line search, and the cumulative seconds per iteration of the
    main steps in the profiled run (they nest: the line search and the c-solve include target
    moments and pair integrals; the profiler's overhead is in them).
    """
    import cProfile
    import inspect
    import pstats
    import subprocess

    import distgn

    comm = MPI.COMM_SELF
    Path(args.work).mkdir(parents=True, exist_ok=True)
    path = OUT / "profile.md"
    lines = (
        []
        if path.exists()
        else [
            "<!-- written by scripts/experiments.py profile -->",
            "",
            "SgGN on the 2D disk target, unit square, uniform start, dense solver, one rank: "
            "seconds per iteration (wall) and cumulative seconds per iteration in the main steps "
            "(cProfile; they nest). Wall time from a run without the profiler.",
            "",
            "| code | n | iterations | s / iteration | evaluations / iteration | "
            + " | ".join(PROFILE_FUNCTIONS)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(PROFILE_FUNCTIONS),
        ]
    )
    for n in args.n:
        config = load_config(
            None,
            DOMAIN[2]
            + [
                "target.name=disk",
                f"network.n={n}",
                "network.init=uniform",
                "solver.kind=dense",
                f"output.path={Path(args.work) / 'profile.h5'}",
                f"train.max_iter={args.iterations}",
                "train.checkpoint_every=0",
                "train.log_every=1000",
                *args.set,
            ],
        )
        problem = build_problem(config)
        # Wall time from a run without the profiler (cProfile adds ~30% here), then the profile.
        result = train(problem, config, comm)
        _, history, _ = load_state(str(Path(args.work) / "profile.h5"))
        count = max(int(result["iterations"]), 1)
        per_iteration = (history["seconds"][-1] - history["seconds"][0]) / count
        evaluations = np.nansum(history.get("evaluations", [np.nan])) / count
        profiler = cProfile.Profile()
        profiler.enable()
        train(problem, config, comm)
        profiler.disable()
        stats = pstats.Stats(profiler).stats
        cumulative = {
            label: sum(
                entry[3]
                for (file, _, function), entry in stats.items()
                if function == name and file.endswith(suffix)
            )
            / count
            for label, (suffix, name) in PROFILE_FUNCTIONS.items()
        }
        where = Path(inspect.getfile(distgn)).parent.parent
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        lines.append(
            f"| {args.label} (`{commit or 'unknown commit'}`) | {n} | {count} | "
            f"{per_iteration:.3f} | {evaluations:.1f} | "
            + " | ".join(f"{cumulative[label]:.3f}" for label in PROFILE_FUNCTIONS)
            + " |"
        )
        print(lines[-1], flush=True)
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


# The SgGN iterations before the Hessian is taken (disk n = 256: a stationary point by then),
# from the uniform start of n neurons (no staged growth: the stationary point of section 2b).
HESSIAN_ITERATIONS = 1000
HESSIAN_SETTINGS = ["train.hops=32"]


def command_hessian(args: argparse.Namespace) -> None:
    """Where SgGN stops: the Gauss-Newton matrix ``D G D`` against the finite-difference Hessian
    H of J in r (c fixed) where SgGN stops on a grid problem (docs/sggn.md, section 2b).

    Trains SgGN on (``--dim``, ``--target``, ``--n``) with ``HESSIAN_SETTINGS`` for at most
    ``HESSIAN_ITERATIONS`` iterations (a fixed count, not the grid's time limit, so that the
    point is reproducible) into ``--work`` (the results files are not touched), then over the
    neurons of the last Gauss-Newton step (``|c_i| > drop_tol max |c|``) forms H by central
    differences of the exact gradient, and reports the gradient, H's spectrum, the part
    ``S = H - D G D`` that Gauss-Newton leaves out, and the loss along the Gauss-Newton step and
    along a Newton step (negative eigenvalues of H flipped) against their quadratic models.
    Writes ``benchmarks/training/hessian.md``.
    """
    from distgn.assembly import layer_matrix, pair_integrals
    from distgn.io import read_run
    from distgn.training.objective import Context, Gradient, loss_and_gradient

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    comm = MPI.COMM_SELF
    run_one(
        comm,
        args.dim,
        args.target,
        args.n,
        "sggn",
        None,
        work,
        {"max_iter": HESSIAN_ITERATIONS, "max_seconds": 3600},
        HESSIAN_SETTINGS,
    )
    run = read_run(str(work / f"{key(args.dim, args.target, args.n, 'sggn').replace('/', '-')}.h5"))
    problem = build_problem(run.config)
    network = run.network
    ctx = Context(problem, comm, run.config.solver, True)
    live = ~run.removed
    start = loss_and_gradient(ctx, network, live)
    c = network.c
    step = live & (np.abs(c) > run.config.train.drop_tol * np.max(np.abs(c[live])))
    index = np.flatnonzero(step)
    k = network.dim + 1
    G = pair_integrals(
        problem.domain,
        network.W[index],
        network.b[index],
        np.arange(index.size),
        np.arange(index.size),
        ("G",),
    )["G"]
    scale = np.repeat(c[index], k)
    gauss_newton = scale[:, None] * layer_matrix(G) * scale[None, :]
    r0 = network.r

    def gradient(r: np.ndarray) -> Gradient:
        return loss_and_gradient(ctx, network.with_r(r), live)

    def loss_along(p: np.ndarray, gamma: float) -> float:
        r = r0.copy()
        r[index] += gamma * p.reshape(-1, k)
        return gradient(r).loss - start.loss

    hessian = np.zeros_like(gauss_newton)
    for col in range(hessian.shape[0]):
        i, q = index[col // k], col % k
        h = args.step * max(1.0, abs(r0[i, q]))
        plus, minus = r0.copy(), r0.copy()
        plus[i, q] += h
        minus[i, q] -= h
        hessian[:, col] = (gradient(plus).r[index] - gradient(minus).r[index]).ravel() / (2 * h)
    asymmetry = np.linalg.norm(hessian - hessian.T) / np.linalg.norm(hessian)
    hessian = 0.5 * (hessian + hessian.T)
    rest = hessian - gauss_newton
    blocks = np.kron(np.eye(index.size), np.ones((k, k))).astype(bool)
    g = start.r[index].ravel()
    eigenvalues, vectors = np.linalg.eigh(hessian)
    p_gn = -np.linalg.lstsq(gauss_newton, g, rcond=1e-12)[0]
    flipped = np.maximum(np.abs(eigenvalues), 1e-12 * np.abs(eigenvalues).max())
    p_newton = -vectors @ ((vectors.T @ g) / flipped)
    command = (
        f"python scripts/experiments.py hessian --dim {args.dim} --target {args.target} "
        f"--n {args.n}"
    )
    lines = [
        "<!-- written by scripts/experiments.py hessian -->",
        "",
        f"Where SgGN stops: {args.dim}D `{args.target}`, n = {args.n}, SgGN from the uniform "
        f"start ({' '.join(HESSIAN_SETTINGS)}, no staged growth) and at most "
        f"{HESSIAN_ITERATIONS} iterations "
        f"({run.result.get('iterations')} iterations, stop `{run.result.get('stop_reason')}`, "
        f"relative L2 error {run.result.get('relative_l2_error'):.4g}). Command: `{command}`.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| J | {start.loss:.4e} |",
        f"| gradient in r (2-norm) | {np.linalg.norm(g):.3e} |",
        f"| neurons in the Gauss-Newton step (of {network.n}) | {index.size} |",
        f"| H: asymmetry of the finite differences (step {args.step:g}) | {asymmetry:.1e} |",
        f"| H: largest eigenvalue | {eigenvalues[-1]:.3e} |",
        f"| H: smallest eigenvalue | {eigenvalues[0]:.3e} |",
        f"| H: negative eigenvalues | {int(np.sum(eigenvalues < 0))} of {eigenvalues.size} |",
        f"| 2-norm of S = H - D G D | {np.abs(np.linalg.eigvalsh(rest)).max():.3e} |",
        f"| S outside its {k} x {k} diagonal blocks, relative (Frobenius) | "
        f"{np.linalg.norm(rest[~blocks]) / np.linalg.norm(rest):.1e} |",
        f"| along the Gauss-Newton step p: p'Sp / p'DGDp | "
        f"{(p_gn @ rest @ p_gn) / (p_gn @ gauss_newton @ p_gn):.3f} |",
        f"| decrease of the Gauss-Newton model at gamma = 1 | {-(g @ p_gn) / 2:.3e} |",
        f"| best decrease of the true quadratic model (Newton, abs(H)) | "
        f"{-(g @ p_newton + 0.5 * p_newton @ hessian @ p_newton):.3e} |",
        "",
        "| direction | gamma | change of J | Gauss-Newton model | true quadratic model |",
        "|---|---|---|---|---|",
    ]
    for name, p in (("Gauss-Newton", p_gn), ("Newton, abs(H)", p_newton)):
        for gamma in (1.0, 0.5, 0.1, 0.01):
            model_gn = gamma * g @ p + 0.5 * gamma**2 * p @ gauss_newton @ p
            model_true = gamma * g @ p + 0.5 * gamma**2 * p @ hessian @ p
            lines.append(
                f"| {name} | {gamma:g} | {loss_along(p, gamma):.3e} | {model_gn:.3e} | "
                f"{model_true:.3e} |"
            )
    (OUT / "hessian.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and store results")
    p.add_argument("--dim", type=int, choices=(1, 2), required=True)
    p.add_argument("--targets", nargs="*")
    p.add_argument("--sizes", nargs="*", type=int)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--work", default="/tmp/distgn-experiments", help="folder for run files")
    p.add_argument("--force", action="store_true", help="rerun runs already in results.json")
    p.add_argument(
        "--store",
        help="write this job's runs to this file instead (for a second "
        "job at once; add them with merge)",
    )
    p = sub.add_parser("merge", help="add the runs of --store files to the results files")
    p.add_argument("--dim", type=int, choices=(1, 2), required=True)
    p.add_argument("files", nargs="+")
    sub.add_parser("report", help="tables and figures from the results files")
    sub.add_parser("pair", help="resolution of a jump by a ReLU pair versus its width")
    p = sub.add_parser("diagnose", help="SgGN error versus n in three settings")
    p.add_argument("--work", default="/tmp/distgn-experiments")
    p = sub.add_parser("profile", help="2D SgGN iteration profile on the disk target")
    p.add_argument("--n", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--label", default="current")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument("--work", default="/tmp/distgn-experiments")
    p = sub.add_parser("hessian", help="Gauss-Newton matrix against the Hessian where SgGN stops")
    p.add_argument("--dim", type=int, choices=(1, 2), default=2)
    p.add_argument("--target", default="disk")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--step", type=float, default=1e-6, help="relative finite-difference step")
    p.add_argument("--work", default="/tmp/distgn-experiments/hessian")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    {
        "run": command_run,
        "report": command_report,
        "pair": command_pair,
        "merge": command_merge,
        "profile": command_profile,
        "diagnose": command_diagnose,
        "hessian": command_hessian,
    }[args.command](args)


if __name__ == "__main__":
    main()
