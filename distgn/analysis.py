"""The matrix study: condition numbers, spectra and HSS block-row ranks of A, H, G.

Condition numbers are computed robustly. In 1D from exact square-root factors ``M = B^T B``: on
each cell between consecutive breakpoints the integrands are polynomials, so ``B`` stacks, per cell,
the exact 2 x 2 (A, G) or 1 x 1 (H) factor of the cell's Gram matrix applied to the neurons' values;
the singular values of B are accurate to ``eps * ||B||``, so cond(M) = cond(B)^2 is resolved up to
about 1e30. In 2D and up, ``eigvalsh`` of the float64 matrix is used and flagged as saturating near
1/eps. HSS block-row ranks are the numerical ranks ``#{sigma_k > tol sigma_1}`` of ``M(I, I^c)`` for
every tree node; a rank computes them for its own subtrees and the nodes above the rank level are
gathered to their first rank.

``run_study``, ``block_row_ranks`` and ``spectrum`` are collective; ``square_root_factor`` is
rank-local. The
spectral part gathers the (n x n) square-root factor on rank 0: it is a study tool for n up to a
few thousand, unlike assembly and the solvers, whose per-rank memory is O(n^2 / P).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace

import h5py
import numpy as np
import scipy.linalg as sla
from mpi4py import MPI

from distgn.assembly import MATRICES, BlockRows, assemble_block_rows
from distgn.assembly.exact1d import active_intervals
from distgn.config import Config
from distgn.errors import InputError
from distgn.io import write_file
from distgn.parallel import log, print0
from distgn.problem import build_problem
from distgn.tree import ClusterTree, network_tree


def square_root_factor(bounds: np.ndarray, W: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """Exact factor B with ``M = B^T B`` for 1D matrices A, H or G (columns: neurons as given)."""
    L, R = float(bounds[0, 0]), float(bounds[0, 1])
    w = W[:, 0]
    t, start, stop = active_intervals(w, b, L, R)
    nodes = np.unique(np.concatenate([[L, R], t[(t > L) & (t < R)]]))
    h = np.diff(nodes)
    mid = 0.5 * (nodes[1:] + nodes[:-1])
    active = (start[None, :] <= mid[:, None]) & (stop[None, :] >= mid[:, None])
    if name == "H":
        return np.sqrt(h)[:, None] * active
    if name == "A":
        f = np.maximum(w[None, :] * (nodes[:, None] - t[None, :]), 0.0)
        f0, f1 = f[:-1] * active, f[1:] * active
        B = np.empty((2 * h.size, w.size))
        B[0::2] = (np.sqrt(h) / 2)[:, None] * (f0 + f1)
        B[1::2] = np.sqrt(h / 12)[:, None] * (f0 - f1)
        return B
    # G: int_cell xhat xhat^T = C^T C with rows sqrt(h) (m, 1) and sqrt(h^3/12) (1, 0).
    B = np.zeros((2 * h.size, 2 * w.size))
    B[0::2, 0::2] = (np.sqrt(h) * mid)[:, None] * active
    B[0::2, 1::2] = np.sqrt(h)[:, None] * active
    B[1::2, 0::2] = np.sqrt(h**3 / 12)[:, None] * active
    return B


def spectrum(
    blocks: BlockRows, name: str, comm: MPI.Comm, bounds: np.ndarray | None
) -> tuple[np.ndarray | None, str]:
    """Eigenvalues of matrix ``name`` (descending) on rank 0, and the method used. Collective.

    ``bounds`` given (1D): squared singular values of the exact square-root factor; otherwise
    ``eigvalsh`` of the gathered float64 matrix.
    """
    if bounds is not None:
        method = "exact square-root factor (float64 SVD)"
        if comm.rank == 0:
            B = square_root_factor(bounds, blocks.W, blocks.b, name)
            return sla.svdvals(B) ** 2, method
        return None, method
    rows = comm.gather(blocks.matrices[name], root=0)
    if comm.rank == 0:
        return sla.eigvalsh(np.vstack(rows))[::-1], "float64 eigvalsh (saturates near 1/eps)"
    return None, "float64 eigvalsh (saturates near 1/eps)"


def block_row_ranks(
    blocks: BlockRows, name: str, comm: MPI.Comm, tolerances: list[float]
) -> dict[float, list[int]]:
    """Largest numerical rank of ``M(I, I^c)`` per tree level, for each tolerance. Collective.

    Returns ``{tol: [max rank at level 1, level 2, ...]}`` on every rank.
    """
    tree: ClusterTree = blocks.tree
    rows = blocks.matrices[name]
    k = rows.shape[1] // tree.n
    depth = tree.depth()
    best = np.zeros((len(tolerances), depth + 1), dtype=np.int64)
    for node in tree.nodes[1:]:
        inside = node.rank_lo <= comm.rank < node.rank_hi
        if not node.is_local:
            # Every rank takes part in the split; the node's ranks gather its rows on its first.
            sub = comm.Split(node.id if inside else MPI.UNDEFINED, comm.rank)
        if not inside:
            continue
        lo, hi = max(node.start, blocks.start), min(node.stop, blocks.stop)
        part = rows[(lo - blocks.start) * k : (hi - blocks.start) * k]
        keep = np.ones(tree.n * k, dtype=bool)
        keep[node.start * k : node.stop * k] = False
        part = part[:, keep]
        if not node.is_local:
            parts = sub.gather(part, root=0)
            sub.Free()
            if comm.rank != node.rank_lo:
                continue
            part = np.vstack(parts)
        s = sla.svdvals(part)
        for a, tol in enumerate(tolerances):
            best[a, node.level] = max(best[a, node.level], int(np.sum(s > tol * s[0])))
    comm.Allreduce(MPI.IN_PLACE, best, op=MPI.MAX)
    return {tol: best[a, 1:].tolist() for a, tol in enumerate(tolerances)}


def fit_power_law(n: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares fit ``value = C n^p`` in log-log; returns (C, p)."""
    p, logc = np.polyfit(np.log(np.asarray(n, float)), np.log(np.asarray(values, float)), 1)
    return float(np.exp(logc)), float(p)


def decay_exponent(eigenvalues: np.ndarray) -> float:
    """Exponent p of ``lambda_k ~ k^-p`` fitted over the middle of the spectrum."""
    k = np.arange(1, eigenvalues.size + 1)
    sel = slice(max(1, eigenvalues.size // 10), max(2, eigenvalues.size * 9 // 10))
    return -float(np.polyfit(np.log(k[sel]), np.log(eigenvalues[sel]), 1)[0])


def plot_prefix(config: Config, path: str) -> str:
    """Where the plots go: ``analyze.plots`` relative to the folder of ``path`` (absolute as
    given); ``""`` is ``path`` without ``.h5``."""
    prefix = config.analyze.plots or os.path.basename(path.removesuffix(".h5"))
    return os.path.join(os.path.dirname(os.path.abspath(path)), prefix)


def run_study(
    config: Config, sizes: list[int], comm: MPI.Comm, path: str, attrs: dict[str, object]
) -> dict:
    """Condition numbers, eigenvalue decay and HSS ranks for every n in ``sizes``. Collective.

    Prints a table on rank 0, writes the numbers to ``path`` (HDF5, root attributes ``attrs``)
    and PNG plots next to it (``plot_prefix``). Returns the JSON-ready results.
    """
    tolerances = [float(t) for t in config.analyze.tolerances]
    if not sizes or any(n < 2 for n in sizes):
        raise InputError(f"analyze.sizes = {sizes!r} must be a list of integers >= 2")
    results: dict = {"n": list(sizes), "ranks": comm.size, "tolerances": tolerances}
    spectra: dict[str, list[np.ndarray]] = {name: [] for name in MATRICES}
    for name in MATRICES:
        results[f"cond_{name}"], results[f"decay_{name}"] = [], []
        results[f"hss_ranks_{name}"] = {str(t): [] for t in tolerances}
    print0(
        comm,
        f"{'n':>6} {'cond(A)':>10} {'cond(H)':>10} {'cond(G)':>10}   max HSS rank per "
        "level (tol " + ", ".join(f"{t:g}" for t in tolerances) + ") A | H | G",
    )
    for n in sizes:
        cfg = replace(config, network=replace(config.network, n=int(n)))
        problem = build_problem(cfg)
        net = problem.network
        tree = network_tree(
            problem.domain,
            net.W,
            net.b,
            config.solver.ordering,
            comm.size,
            config.analyze.leaf_size,
        )
        blocks = assemble_block_rows(problem, tree, comm.rank, MATRICES)
        bounds = problem.domain.bounds if problem.domain.dim == 1 else None
        cells = []
        for name in MATRICES:
            eig, method = spectrum(blocks, name, comm, bounds)
            eig = comm.bcast(eig)
            results[f"method_{name}"] = method
            results[f"cond_{name}"].append(float(eig[0] / eig[-1]))
            results[f"decay_{name}"].append(decay_exponent(eig))
            spectra[name].append(eig)
            ranks = block_row_ranks(blocks, name, comm, tolerances)
            for tol in tolerances:
                results[f"hss_ranks_{name}"][str(tol)].append(ranks[tol])
            cells.append("/".join(str(max(ranks[t], default=0)) for t in tolerances))
        print0(
            comm,
            f"{n:>6} "
            + " ".join(f"{results[f'cond_{m}'][-1]:10.3e}" for m in MATRICES)
            + "   "
            + " | ".join(cells),
        )
    for name in MATRICES:
        if len(sizes) > 1:
            const, exponent = fit_power_law(sizes, results[f"cond_{name}"])
        else:
            const, exponent = float("nan"), float("nan")
        results[f"exponent_{name}"], results[f"constant_{name}"] = exponent, const
    print0(
        comm,
        "fitted cond = C n^p: "
        + ", ".join(
            f"{m}: {results[f'constant_{m}']:.3g} n^{results[f'exponent_{m}']:.2f}"
            for m in MATRICES
        ),
    )
    print0(
        comm,
        "condition numbers from: " + "; ".join(f"{m}: {results[f'method_{m}']}" for m in MATRICES),
    )
    # matplotlib is an optional dependency (the "plot" extra): without it the study has no plot.
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("analyze: matplotlib is not installed (pip install 'distgn[plot]'): no plot")
        results["plots"] = []
    else:
        results["plots"] = [f"{plot_prefix(config, path)}.png"]
    if comm.rank == 0 and results["plots"]:
        _plot_study(results["plots"][0], results, spectra)

    def fill(fh: h5py.File) -> None:
        fh.attrs["results"] = json.dumps(results)
        fh.attrs["plots"] = json.dumps(results["plots"])
        fh.create_dataset("n", data=np.asarray(results["n"]))
        for name, eigs in spectra.items():
            fh.create_dataset(f"cond_{name}", data=np.asarray(results[f"cond_{name}"]))
            group = fh.create_group(f"eigenvalues_{name}")
            group.attrs["method"] = results[f"method_{name}"]
            for n, eig in zip(results["n"], eigs, strict=True):
                group.create_dataset(str(n), data=eig)

    write_file(path, comm, {**attrs, "n": int(max(sizes)), "d": problem.domain.dim}, fill)
    print0(comm, f"wrote {path} and {', '.join(results['plots'])}")
    return results


def _plot_study(out: str, results: dict, spectra: dict[str, list[np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(results["n"], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in MATRICES:
        axes[0].loglog(
            n,
            results[f"cond_{name}"],
            "o-",
            label=f"{name}: {results[f'constant_{name}']:.3g} n^{results[f'exponent_{name}']:.2f}",
        )
        eig = spectra[name][-1]
        axes[1].loglog(np.arange(1, eig.size + 1), eig / eig[0], label=f"{name} (n = {int(n[-1])})")
        for tol, ranks in results[f"hss_ranks_{name}"].items():
            axes[2].plot(n, [max(r, default=0) for r in ranks], "o-", label=f"{name}, tol {tol}")
    axes[0].axhline(1 / np.finfo(float).eps, color="gray", ls=":", label="1/eps")
    axes[0].set(xlabel="n", ylabel="condition number", title="Condition numbers")
    axes[1].set(xlabel="k", ylabel="lambda_k / lambda_1", title="Eigenvalue decay")
    axes[2].set(xlabel="n", ylabel="max rank of M(I, I^c)", title="HSS block-row ranks")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
