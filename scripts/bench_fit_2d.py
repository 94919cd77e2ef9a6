"""2D fit against n, measured through the command a user runs: ``distgn solve`` on the 2D examples.

For every example, n and solver variant (``VARIANTS``: dense Cholesky, hss at tol 1e-8, CG with the
hss preconditioner with and without the ridge ``solver.regularization``) it runs

    mpiexec -n P python -m mpi4py -m distgn solve examples/EXAMPLE.toml --json \\
        --set network.n=N --set solver.kind=KIND ...

in a subprocess (``scripts/bench_large_n.py``'s runner) and records the fit error, the solver's
statistics and the wall time of the whole command. The independent reference is the best fit over
the span of the same neurons: the exact matrix assembled on one rank, Jacobi-scaled, and solved by
a symmetric eigendecomposition (pseudo-inverses over the eigenvalues above 0, ``eps lambda_max``
and ``n eps lambda_max``; the lowest of their fit errors ``sqrt(||u||^2 - 2 c.F + c^T A c)``,
evaluated in long double; any c gives an upper bound of the best fit). Writes ``<out>.json``
and the generated block of ``<out>.md``. The command that made benchmarks/fit-2d.md:

    python scripts/bench_fit_2d.py --sizes 6,7,8,9,10,11,12 --out benchmarks/fit-2d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distgn.assembly import target_integrals
from distgn.config import load_config
from distgn.operator import build
from distgn.problem import build_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_large_n import ROOT, command, load_rows, run, save_rows, write_block  # noqa: E402

EXAMPLES = ("solve-2d", "train-2d")
RIDGE = 1e-8
# Eigenvalue cut-offs (relative to the largest) of the reference pseudo-inverse; the best of them.
THRESHOLDS = (lambda n: 0.0, lambda n: np.finfo(float).eps, lambda n: n * np.finfo(float).eps)
VARIANTS = {
    "dense": ['solver.kind="dense"'],
    "hss 1e-8": ['solver.kind="hss"', "solver.tol=1e-8"],
    "cg + hss PC": ['solver.kind="krylov"', 'solver.petsc_options="-distgn_pc_type hss"'],
    f"cg + hss PC + ridge {RIDGE:g}": [
        'solver.kind="krylov"',
        'solver.petsc_options="-distgn_pc_type hss"',
        f"solver.regularization={RIDGE}",
    ],
}


def best_fit(example: str, n: int) -> tuple[float, float, float]:
    """The best fit over the span of the example's neurons (module docstring), and the smallest
    and largest eigenvalue of the Jacobi-scaled A. Serial."""
    config = load_config(
        ROOT / "examples" / f"{example}.toml", [f"network.n={n}", 'solver.kind="dense"']
    )
    problem = build_problem(config)
    operator, blocks = build(problem, config.solver, MPI.COMM_SELF, "A")
    A, F = operator.rows, blocks.F
    s = 1.0 / np.sqrt(np.diag(A))
    lam, V = np.linalg.eigh(A * s[:, None] * s[None, :])
    _, u_sq = target_integrals(problem.domain, problem.target)
    A_l, F_l = np.asarray(A, dtype=np.longdouble), np.asarray(F, dtype=np.longdouble)
    errors = []
    for threshold in THRESHOLDS:
        keep = lam > threshold(n) * lam[-1]
        c = np.asarray(s * (V[:, keep] @ ((V[:, keep].T @ (s * F)) / lam[keep])), np.longdouble)
        errors.append(float(np.sqrt(u_sq - 2 * (c @ F_l) + c @ (A_l @ c))))
    return min(errors), float(lam[0]), float(lam[-1])


def table(rows: list[dict], example: str) -> str:
    """Markdown table of one example: fit error (and whole-command seconds) per variant."""
    names = list(VARIANTS)
    head = (
        "| n | eigenvalues of the Jacobi-scaled A | best fit (reference) | "
        + " | ".join(names)
        + " |\n|---|---|---|"
        + "---|" * len(names)
        + "\n"
    )
    lines = []
    for n in sorted({r["n"] for r in rows if r["example"] == example}):
        cells = []
        best = spread = None
        for name in names:
            r = next(
                (r for r in rows if (r["example"], r["n"], r["variant"]) == (example, n, name)),
                None,
            )
            if r is None:
                cells.append("-")
                continue
            best = r["best_fit"]
            spread = f"{r['eigenvalue_min']:.1e} .. {r['eigenvalue_max']:.1e}"
            if r["returncode"] != 0:
                cells.append(f"failed: {r['error'].removeprefix('distgn: error: ')}")
                continue
            extra = f", {r['iterations']} it" if "iterations" in r else ""
            ratio = r["fit_l2_error"] / best
            cells.append(
                f"{r['fit_l2_error']:.4e} (x{ratio:.3f}; {r['wall_seconds']:.1f} s{extra})"
            )
        lines.append(f"| {n} | {spread} | {best:.4e} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6,7,8,9,10,11,12", help="log2 n values")
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="names of VARIANTS")
    parser.add_argument("--out", default="benchmarks/fit-2d")
    parser.add_argument("--update", action="store_true", help="keep other rows of <out>.json")
    args = parser.parse_args()
    python = str(ROOT / ".venv/bin/python")
    out = ROOT / args.out
    rows = load_rows(out, args.update)
    for example in args.examples.split(","):
        for n in (2 ** int(s) for s in args.sizes.split(",")):
            best, lam_min, lam_max = best_fit(example, n)
            for name in args.variants.split(","):
                sets = VARIANTS[name]
                rows = [
                    r for r in rows if (r["example"], r["n"], r["variant"]) != (example, n, name)
                ]
                sets = [f"network.n={n}", 'output.path="/tmp/bench-fit-2d.h5"', *sets]
                argv = command(f"examples/{example}.toml", sets, args.ranks, python)
                row = run(argv, example=example, n=n, ranks=args.ranks, variant=name)
                row.update(best_fit=best, eigenvalue_min=lam_min, eigenvalue_max=lam_max)
                rows.append(row)
                print(
                    json.dumps(
                        {k: row.get(k) for k in ("example", "n", "variant", "wall_seconds")}
                        | {k: row.get(k) for k in ("fit_l2_error", "best_fit", "error")}
                    ),
                    flush=True,
                )
                save_rows(out, rows)
    examples = sorted({r["example"] for r in rows})
    write_block(
        out.with_suffix(".md"),
        "\n".join(f"### `examples/{e}.toml`\n\n{table(rows, e)}" for e in examples),
        Path(__file__).name,
    )


if __name__ == "__main__":
    main()
