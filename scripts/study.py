"""Scaling and solver studies: tables (CSV, JSON, Markdown) and PNG plots with fitted slopes.

Each study runs ``distgn`` once per point (locally through ``--launch``, default
``mpiexec -n {ranks}``), or reads the job outputs of the SLURM submitters (``--from DIR``: the
``*.out`` files of slurm/scaling.sh or slurm/sweep.sh). Every table has the largest rank's peak
memory (``peak_memory_bytes``), the bytes the busiest rank handed to MPI over the whole command
(``bytes_sent_per_rank``, distgn's ``comm_bytes_max``) and the bytes of the hss factorization's
tree levels (``bytes_sent``, the sum of ``bytes_sent_per_level``) where distgn reports them, else
``missing``.

    python scripts/study.py strong examples/solve-1d.toml --ranks 1,2,4 --set network.n=16384 \\
        -o benchmarks/scaling/strong_1d
    python scripts/study.py weak examples/solve-1d.toml --ranks 1,2,4 --n0 65536 --per-rank n \\
        --set solver.matrix_free=true -o benchmarks/scaling/weak_1d_mf
    python scripts/study.py conditioning examples/demo.toml --sizes 64,128,256,512,1024
    python scripts/study.py solvers examples/solve-1d.toml --sizes 1024,2048,4096 \\
        --solvers hss,dense,krylov
    python scripts/study.py sggn examples/demo.toml --sizes 16,32,64
    python scripts/study.py strong examples/solve-1d.toml --from distgn-results -o strong

(As root, Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; beyond the
core count use ``--launch "mpiexec --oversubscribe -n {ranks}"``.)
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matplotlib  # noqa: E402
from collect import collect, with_traffic, write_tables  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("seconds_assemble", "seconds_factor", "seconds_solve")


def run_distgn(
    args: argparse.Namespace, command: str, ranks: int, sets: list[str], extra: list[str] = ()
) -> dict:
    """Run ``distgn COMMAND CONFIG --json`` on ``ranks`` ranks; its JSON result plus ``status``.

    A failed run (non-zero exit status) gives ``{"status": code, "error": last stderr line}``.
    """
    launch = shlex.split(args.launch.format(ranks=ranks))
    argv = [
        *launch,
        sys.executable,
        "-m",
        "mpi4py",
        "-m",
        "distgn",
        command,
        args.config,
        *[x for s in [*args.set, *sets] for x in ("--set", s)],
        *extra,
        "--json",
    ]
    print("+", shlex.join(argv), file=sys.stderr, flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=args.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        error = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  failed ({done.returncode}): {error}", file=sys.stderr)
        return {"status": done.returncode, "error": error}
    result = json.loads(lines[-1])
    result["status"] = 0
    return result


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent p of ``y ~ C x^p`` (nan with fewer than two positive points)."""
    pts = [
        (a, b)
        for a, b in zip(x, y, strict=True)
        if a > 0 and b is not None and b > 0 and math.isfinite(b)
    ]
    if len(pts) < 2 or len({a for a, _ in pts}) < 2:
        return math.nan
    return float(np.polyfit(np.log([a for a, _ in pts]), np.log([b for _, b in pts]), 1)[0])


def output_set(workdir: Path, name: str) -> str:
    """``--set`` item sending a run's output file to the temporary folder."""
    return f'output.path="{workdir / name}"'


def finish(rows: list[dict], prefix: Path, fits: dict, fig: plt.Figure, meta: dict) -> None:
    """Write the tables, the fitted slopes (PREFIX.fits.json) and the plot (PREFIX.png)."""
    rows = [with_traffic(dict(r)) for r in rows]
    for path in write_tables(rows, prefix):
        print(path)
    fits_path = prefix.parent / (prefix.name + ".fits.json")
    fits_path.write_text(json.dumps({**meta, "fitted_slopes": fits}, indent=1) + "\n")
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=110)
    print(fits_path)
    print(prefix.with_suffix(".png"))


def scaling_rows(args: argparse.Namespace, mode: str, workdir: Path) -> list[dict]:
    """One solve per rank count (or the collected SLURM outputs with ``--from``)."""
    if args.source:
        rows, failed = collect([args.source])
        for path in failed:
            print(f"study: no result in {path}", file=sys.stderr)
        return sorted(rows, key=lambda r: r["ranks"])
    rows = []
    for p in args.ranks:
        sets = [output_set(workdir, f"{mode}-{p}.h5")]
        if mode == "weak":
            n = round(args.n0 * math.sqrt(p)) if args.per_rank == "n2" else args.n0 * p
            sets.append(f"network.n={n}")
        rows.append(run_distgn(args, "solve", p, sets))
    return [r for r in rows if r["status"] == 0]


def cmd_scaling(args: argparse.Namespace, mode: str, workdir: Path) -> None:
    """Strong or weak scaling: seconds per phase against P, speed-up and efficiency."""
    rows = scaling_rows(args, mode, workdir)
    if not rows:
        raise SystemExit("study: no successful run")
    ranks = [r["ranks"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fits = {}
    for key in PHASES:
        times = [r.get(key) for r in rows]
        if all(t is not None for t in times):
            fits[key] = slope(ranks, times)
            ax.loglog(ranks, times, "o-", label=f"{key[8:]} (slope {fits[key]:.2f})")
    total = [sum(r.get(k, 0.0) for k in PHASES) for r in rows]
    fits["seconds_total"] = slope(ranks, total)
    ax.loglog(ranks, total, "ks-", label=f"total (slope {fits['seconds_total']:.2f})")
    if mode == "strong":
        ax.loglog(ranks, [total[0] * ranks[0] / p for p in ranks], "k:", label="ideal (slope -1)")
        title = f"strong scaling, n = {rows[0]['n']}"
    else:
        ax.loglog(ranks, [total[0]] * len(ranks), "k:", label="ideal (slope 0)")
        per = "n^2/P" if args.per_rank == "n2" else "n/P"
        title = f"weak scaling ({per} fixed), n = {rows[0]['n']} .. {rows[-1]['n']}"
    for r, t in zip(rows, total, strict=True):
        r["seconds_total"] = t
        r["speedup"] = total[0] * ranks[0] / t if mode == "strong" else total[0] / t
        r["efficiency"] = (
            r["speedup"] / (r["ranks"] / ranks[0]) if mode == "strong" else r["speedup"]
        )
    ax.set(xlabel="ranks P", ylabel="seconds", title=title)
    ax.set_xticks(ranks, [str(p) for p in ranks])
    ax.legend(fontsize=8)
    finish(rows, args.output, fits, fig, {"study": mode, "config": args.config, "set": args.set})


def cmd_conditioning(args: argparse.Namespace, workdir: Path) -> None:
    """cond(A), cond(H), cond(G) and the max HSS ranks against n (``distgn analyze``)."""
    result = run_distgn(
        args,
        "analyze",
        args.ranks[0],
        [output_set(workdir, "analyze.h5"), f'analyze.plots="{workdir / "analysis"}"'],
        ["--sizes", ",".join(map(str, args.sizes))],
    )
    if result["status"] != 0:
        raise SystemExit(f"study: analyze failed: {result['error']}")
    rows = [
        {
            "n": n,
            "ranks": result["ranks"],
            **{f"cond_{m}": result[f"cond_{m}"][i] for m in "AHG"},
            **{
                f"max_hss_rank_{m}_{tol}": max(result[f"hss_ranks_{m}"][tol][i])
                for m in "AHG"
                for tol in result[f"hss_ranks_{m}"]
            },
        }
        for i, n in enumerate(result["n"])
    ]
    # one analyze run covers every n: its peak memory is that of the largest n, its bytes those
    # of the whole run
    rows[-1]["peak_memory_bytes"] = result["peak_memory_bytes"]
    rows[-1]["comm_bytes_max"] = result["comm_bytes_max"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fits = {}
    for m in "AHG":
        cond = result[f"cond_{m}"]
        fits[f"cond_{m}"] = slope(result["n"], cond)
        ax.loglog(result["n"], cond, "o-", label=f"cond({m}) ~ n^{fits[f'cond_{m}']:.2f}")
    ax.set(xlabel="n", ylabel="condition number", title="conditioning of A, H, G")
    ax.legend()
    finish(
        rows,
        args.output,
        fits,
        fig,
        {
            "study": "conditioning",
            "config": args.config,
            "set": args.set,
            "method": result.get("method_A"),
        },
    )


def cmd_solvers(args: argparse.Namespace, workdir: Path) -> None:
    """Factor + solve seconds and fit error against n for each solver (``distgn solve``)."""
    rows = []
    for solver in args.solvers:
        for n in args.sizes:
            sets = [
                f"network.n={n}",
                f'solver.kind="{solver}"',
                output_set(workdir, f"{solver}-{n}.h5"),
            ]
            if solver == "krylov":
                sets.append(f'solver.petsc_options="{args.krylov_options}"')
            row = run_distgn(args, "solve", args.ranks[0], sets)
            row.update(n=n, solver=solver)
            if row["status"] == 0:
                row["seconds_total"] = sum(row.get(k, 0.0) for k in PHASES)
            rows.append(row)
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4.2))
    fits = {}
    for solver in args.solvers:
        ok = [r for r in rows if r["solver"] == solver and r["status"] == 0]
        if not ok:
            continue
        n = [r["n"] for r in ok]
        t = [r["seconds_factor"] + r["seconds_solve"] for r in ok]
        err = [r["fit_l2_error"] for r in ok]
        fits[f"seconds_factor_solve_{solver}"] = slope(n, t)
        fits[f"fit_l2_error_{solver}"] = slope(n, err)
        for ax, y, key in ((ax_t, t, "seconds_factor_solve"), (ax_e, err, "fit_l2_error")):
            ax.loglog(n, y, "o-", label=f"{solver} (slope {fits[f'{key}_{solver}']:.2f})")
    ax_t.set(xlabel="n", ylabel="factor + solve seconds", title=f"{args.ranks[0]} rank(s)")
    ax_e.set(xlabel="n", ylabel="L2 fit error", title="fit error")
    ax_t.legend(fontsize=8)
    ax_e.legend(fontsize=8)
    finish(
        rows,
        args.output,
        fits,
        fig,
        {
            "study": "solvers",
            "config": args.config,
            "set": args.set,
            "krylov_options": args.krylov_options,
        },
    )


def cmd_sggn(args: argparse.Namespace, workdir: Path) -> None:
    """SgGN convergence (loss against iteration and seconds) for each n (``distgn train``)."""
    rows, histories = [], {}
    for n in args.sizes:
        out = workdir / f"sggn-{n}.h5"
        row = run_distgn(
            args, "train", args.ranks[0], [f"network.n={n}", output_set(workdir, out.name)]
        )
        row["n"] = n
        if row["status"] == 0:
            with h5py.File(out, "r") as fh:
                histories[n] = {k: fh[f"history/{k}"][...] for k in ("loss", "seconds")}
            row["seconds_per_iteration"] = row["seconds"] / max(row["iterations"], 1)
        rows.append(row)
    fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(10, 4.2))
    for n, hist in histories.items():
        ax_l.semilogy(np.arange(len(hist["loss"])), hist["loss"], label=f"n = {n}")
        ax_t.semilogy(hist["seconds"], hist["loss"], label=f"n = {n}")
    ok = [r for r in rows if r["status"] == 0]
    fits = {
        "seconds_per_iteration": slope(
            [r["n"] for r in ok], [r["seconds_per_iteration"] for r in ok]
        )
    }
    ax_l.set(xlabel="iteration", ylabel="loss", title="SgGN convergence")
    ax_t.set(
        xlabel="seconds",
        ylabel="loss",
        title=f"time per iteration ~ n^{fits['seconds_per_iteration']:.2f}",
    )
    ax_l.legend(fontsize=8)
    finish(rows, args.output, fits, fig, {"study": "sggn", "config": args.config, "set": args.set})


def parser() -> argparse.ArgumentParser:
    """Command line: one subcommand per study."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="study", required=True)

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    for name in ("strong", "weak", "conditioning", "solvers", "sggn"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("--set", action="append", default=[], help="section.key=value for all runs")
        s.add_argument("--ranks", type=ints, default=[1], help="rank counts (comma-separated)")
        s.add_argument("--launch", default="mpiexec -n {ranks}", help="launcher, {ranks} filled in")
        s.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
        s.add_argument(
            "-o",
            "--output",
            type=Path,
            default=Path(f"study-{name}"),
            help="prefix of the tables and the plot",
        )
        if name in ("strong", "weak"):
            s.add_argument("--from", dest="source", help="folder of SLURM job outputs to read")
        if name == "weak":
            s.add_argument("--n0", type=int, required=True, help="n on one rank")
            s.add_argument(
                "--per-rank",
                choices=("n2", "n"),
                required=True,
                help="keep n^2/P (stored block rows) or n/P (matrix-free) fixed",
            )
        if name in ("conditioning", "solvers", "sggn"):
            s.add_argument("--sizes", type=ints, required=True, help="values of n")
        if name == "solvers":
            s.add_argument("--solvers", type=lambda t: t.split(","), default=["hss", "dense"])
            s.add_argument(
                "--krylov-options",
                default="-distgn_pc_type hss",
                help="PETSc options of the krylov runs",
            )
    return p


def main(argv: list[str] | None = None) -> None:
    """Run one study; runs write into a temporary folder, results to ``--output``."""
    args = parser().parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distgn-study-") as tmp:
        workdir = Path(tmp)
        if args.study in ("strong", "weak"):
            cmd_scaling(args, args.study, workdir)
        elif args.study == "conditioning":
            cmd_conditioning(args, workdir)
        elif args.study == "solvers":
            cmd_solvers(args, workdir)
        else:
            cmd_sggn(args, workdir)


if __name__ == "__main__":
    main()
