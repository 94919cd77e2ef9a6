"""Performance model of the hierarchical (HSS) solve: alpha-beta-gamma costs per tree level.

Three steps (docs/performance-model.md explains the model and its assumptions):

    mpiexec -n 2 python scripts/perfmodel.py calibrate -o cal.json
        latency alpha and inverse bandwidth beta (mpi4py ping-pong, 8 B .. 8 MB) and flop rates
        (numpy GEMM: large 2000^2, and the block sizes the solver uses)
    mpiexec -n P python scripts/perfmodel.py measure CONFIG [--set k=v ...] -o meas-P.json
        one instrumented ``distgn solve`` (matrix A, hss, interpolative skeletons): per tree level
        and rank the nodes, their sizes and skeleton ranks, the counted flops, the seconds, the
        messages and bytes sent; the assembly, sketch and solve phases likewise
    python scripts/perfmodel.py model cal.json meas-*.json -o benchmarks/perfmodel/NAME
        fits the per-node overhead and effective flop rate to the one-rank run, predicts the
        others (the validation error is printed and stored), extrapolates to P = 64 .. 4096 and
        the n given by --extrapolate-n, writes PREFIX.json, PREFIX.md and PREFIX.png

Flops are counted from the block shapes of every node the run factored (``node_flops``), not read
from hardware counters; seconds (wall and CPU), messages and bytes are measured. The model works
with the CPU seconds of the slowest rank, so that other jobs on a shared machine, or more ranks
than cores, do not enter (MPI's busy waiting does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

MESSAGE_SIZES = [8 * 4**i for i in range(11)]  # 8 B .. 8 MiB
DEFAULT_SAMPLES, OVERSAMPLE = 24, 10  # as distgn.solvers.hss.distributed (checked in measure)


def node_flops(size: int, samples: int, rank: int) -> float:
    """Flops of one node of the skeleton scheme (leaf: size = leaf size; merge: sum of the
    children's ranks): ``D @ Omega`` (2 s^2 k), pivoted QR of the s x k sample (4 s k^2), the
    orthogonal elimination (4 s^2 r) and the Cholesky-like factor of the block (s^3 / 3)."""
    s, k, r = float(size), float(samples), float(rank)
    return s**3 / 3 + 2 * s * s * k + 4 * s * k * k + 4 * s * s * r


# ----------------------------------------------------------------------------------- calibrate
def calibrate(comm: MPI.Comm, repeats: int) -> dict:
    """Ping-pong between ranks 0 and 1 and GEMM rates on rank 0. Collective (2 ranks or more)."""
    if comm.size < 2:
        raise SystemExit("calibrate needs 2 ranks (mpiexec -n 2)")
    times = []
    for size in MESSAGE_SIZES:
        buf = np.zeros(size, dtype=np.uint8)
        comm.Barrier()
        best = math.inf
        for _ in range(repeats):
            start = MPI.Wtime()
            if comm.rank == 0:
                comm.Send(buf, dest=1)
                comm.Recv(buf, source=1)
            elif comm.rank == 1:
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)
            best = min(best, (MPI.Wtime() - start) / 2)
        times.append(best)
    sizes = np.array(MESSAGE_SIZES, dtype=float)
    beta, alpha = np.polyfit(sizes, np.array(times), 1)
    small = [t for s, t in zip(MESSAGE_SIZES, times, strict=True) if s <= 64]
    alpha = float(min(small)) if alpha <= 0 else float(alpha)
    rates = {}
    if comm.rank == 0:
        rng = np.random.default_rng(0)
        for m, k in [(2000, 2000), (64, 24), (12, 24)]:
            a, b = rng.standard_normal((m, m)), rng.standard_normal((m, k))
            reps = max(1, int(2e8 / (2 * m * m * k)))
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            rates[f"gemm_{m}x{m}x{k}"] = 2 * m * m * k * reps / (time.perf_counter() - start)
    return {
        "alpha_seconds": alpha,
        "beta_seconds_per_byte": float(beta),
        "bandwidth_bytes_per_second": float(1 / beta),
        "pingpong_bytes": MESSAGE_SIZES,
        "pingpong_seconds": times,
        "flop_rates": comm.bcast(rates),
        "ranks": comm.size,
        "host": MPI.Get_processor_name(),
    }


# ------------------------------------------------------------------------------------- measure
class Recorder:
    """Per-level seconds, flops, messages and bytes of one rank, by wrapping the HSS methods."""

    def __init__(self) -> None:
        self.levels: dict[int, dict] = {}
        # (level, unknowns under the node, rows of the factored block, skeleton rank)
        self.nodes: list[tuple[int, int, int, int]] = []
        self.sketches: list[tuple[float, int]] = []  # (seconds, width)

    def level(self, level: int) -> dict:
        """The record of one tree level (created empty)."""
        return self.levels.setdefault(
            level,
            {
                "nodes": 0,
                "flops": 0.0,
                "cpu_compute": 0.0,
                "seconds_merge": 0.0,
                "messages": 0,
                "bytes": 0,
            },
        )

    def record(self, scheme, nodes, blocks, groups, seconds: float) -> None:
        """One batched factorization of ``nodes`` (one level) with block sizes ``blocks``."""
        ranks = {
            int(i): (s.rank if s is not None else 0)
            for g in groups
            for i, s in zip(g.ids, g.summaries or [None] * len(g.ids), strict=True)
        }
        samples = scheme.omega.shape[1]
        row = self.level(nodes[0].level)
        row["nodes"] += len(nodes)
        row["cpu_compute"] += seconds
        for node, size in zip(nodes, blocks, strict=True):
            rank = ranks.get(node.id, 0)
            row["flops"] += node_flops(size, samples, rank)
            self.nodes.append((node.level, node.size, size, rank))

    def install(self) -> None:
        """Wrap the HSS construction, sketch, batched node factorizations and merges."""
        from distgn.solvers.hss import compress, distributed

        recorder = self
        init = distributed.HSSFactorization.__init__
        sketch = distributed.sketch
        leaves = compress.SkeletonScheme.leaves
        parents = compress.SkeletonScheme.parents
        merge_ranks = distributed.HSSFactorization._merge_ranks

        def timed_leaves(self, nodes, root=False):
            start = time.process_time()
            groups = leaves(self, nodes, root)
            k = self.operator.block
            blocks = [nd.size * k for nd in nodes]
            recorder.record(self, nodes, blocks, groups, time.process_time() - start)
            return groups

        def timed_parents(self, nodes, lefts, rights, root=False):
            start = time.process_time()
            groups = parents(self, nodes, lefts, rights, root)
            blocks = [a.rank + b.rank for a, b in zip(lefts, rights, strict=True)]
            recorder.record(self, nodes, blocks, groups, time.process_time() - start)
            return groups

        def timed_merge_ranks(self, scheme, node, summaries):
            start = time.perf_counter()
            merge_ranks(self, scheme, node, summaries)
            recorder.level(node.level)["seconds_merge"] += time.perf_counter() - start

        def fresh_init(self, *args, **kwargs):
            # factor() repeats the construction with a wider sketch when a rank came too close
            # to its width: only the last construction is recorded.
            recorder.levels.clear()
            recorder.nodes.clear()
            recorder.sketches.clear()
            init(self, *args, **kwargs)
            for level, row in recorder.levels.items():
                row["bytes"], row["messages"] = self.comm.since(
                    self.counted_since, ("level", level)
                )

        def timed_sketch(operator, omega):
            start = time.process_time()
            out = sketch(operator, omega)
            recorder.sketches.append((time.process_time() - start, omega.shape[1]))
            return out

        distributed.HSSFactorization.__init__ = fresh_init
        distributed.sketch = timed_sketch
        compress.SkeletonScheme.leaves = timed_leaves
        compress.SkeletonScheme.parents = timed_parents
        distributed.HSSFactorization._merge_ranks = timed_merge_ranks


def measure(comm: MPI.Comm, config_path: str, overrides: list[str]) -> dict:
    """One instrumented solve with A as ``distgn solve`` does it (1D: the value-coordinate system
    of ``distgn.operator.nodal_operator``; else the neuron basis); per-level records of every
    rank. Collective."""
    from distgn.config import load_config
    from distgn.operator import build, nodal_operator, problem_tree, uses_nodal
    from distgn.problem import build_problem
    from distgn.solvers.hss import distributed

    if (distributed.DEFAULT_SAMPLES, distributed.OVERSAMPLE) != (DEFAULT_SAMPLES, OVERSAMPLE):
        raise SystemExit("perfmodel: update DEFAULT_SAMPLES and OVERSAMPLE to the solver's")
    config = load_config(config_path, overrides)
    cfg = config.solver
    recorder = Recorder()
    recorder.install()
    clock = Clock(comm)
    # The network and its tree, as ``distgn solve`` builds them: in 1D each rank its neurons and
    # its part of the tree (O(n / P)); else whole on every rank (replicated, O(n log n)).
    problem = build_problem(config, comm)
    tree = problem_tree(problem, cfg, comm)
    phases = {"network": clock.lap()}
    operator, _ = build(problem, cfg, comm, "A", tree)
    if uses_nodal(problem, cfg, "A"):
        operator = nodal_operator(operator, cfg, problem.output_bias)
    phases["assemble"] = clock.lap()
    solver = distributed.factor(operator, cfg.tol, cfg.sample_size, cfg.seed, False)
    phases["factor"] = clock.lap()
    solver.solve(np.ones(operator.local_range[1] - operator.local_range[0]))
    phases["solve"] = clock.lap()
    lo, hi = operator.local_range
    local = {
        **{f"seconds_{k}": wall for k, (wall, _) in phases.items()},
        **{f"cpu_{k}": cpu for k, (_, cpu) in phases.items()},
        "rows": hi - lo,
        "cpu_sketch": sum(t for t, _ in recorder.sketches),
        "sketch_widths": [k for _, k in recorder.sketches],
        "levels": {str(k): v for k, v in sorted(recorder.levels.items())},
        "nodes": recorder.nodes,
        "peak_memory_bytes": _peak_memory(),
    }
    ranks = comm.gather(local)
    stats = solver.stats()
    if comm.rank != 0:
        return {}
    return {
        "config": config_path,
        "set": overrides,
        "n": tree.n,
        "size": operator.size,
        "basis": operator.basis,
        "d": problem.domain.dim,
        "ranks": comm.size,
        "leaf_size": cfg.leaf_size,
        "matrix_free": cfg.matrix_free,
        "tol": cfg.tol,
        "samples": solver.samples,
        "max_rank": stats["max_rank"],
        "bytes_sent_per_level": stats["bytes_sent_per_level"],
        "bytes_sent_sketch": stats["bytes_sent_sketch"],
        "per_rank": ranks,
    }


class Clock:
    """Wall and CPU seconds of consecutive phases, each started after a barrier."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        comm.Barrier()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        """Seconds (wall, this process's CPU) since the previous lap; then a barrier."""
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.comm.Barrier()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return wall, cpu


def _peak_memory() -> int:
    """Peak resident memory of this process in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------- model
def fit_node_costs(meas: dict) -> dict:
    """Per-node overhead t0 and effective flop time g from the levels of a one-rank run:
    ``seconds(level) = nodes t0 + flops g`` (least squares over levels, both nonnegative)."""
    levels = meas["per_rank"][0]["levels"].values()
    A = np.array([[lv["nodes"], lv["flops"]] for lv in levels], dtype=float)
    y = np.array([lv["cpu_compute"] for lv in levels])
    from scipy.optimize import nnls

    scale = A.max(axis=0)
    coef, _ = nnls(A / scale, y)
    return {
        "seconds_per_node": float(coef[0] / scale[0]),
        "seconds_per_flop": float(coef[1] / scale[1]),
    }


def rank_growth(measurements: list[dict]) -> dict:
    """Skeleton rank as a function of the neurons s under a node: ``r = c s^a``, fitted to the
    nodes of at least 4 leaves (the leaves' ranks are capped by their size)."""
    pts = [
        (s, r)
        for m in measurements
        for pr in m["per_rank"]
        for _, s, _, r in pr["nodes"]
        if r > 0 and s >= 4 * m["leaf_size"]
    ]
    s, r = np.array(pts, dtype=float).T
    a, logc = np.polyfit(np.log(s), np.log(r), 1) if np.ptp(np.log(s)) > 0 else (0.0, 0.0)
    return {"exponent": float(a), "constant": float(math.exp(logc)), "max_rank": int(r.max())}


class Model:
    """Predicted seconds of assembly, sketch, factorization and solve for (n, P).

    Parameters
    ----------
    cal : dict
        Output of ``calibrate`` (alpha, beta).
    base : dict
        The one-rank ``measure`` run whose phases and levels set the rates.
    growth : dict
        Skeleton rank growth with the node's block size (``rank_growth``).
    assembly_exponent : float
        Exponent a of the assembly time ``~ n^a`` (fitted on one-rank runs of several n).
    """

    def __init__(self, cal: dict, base: dict, growth: dict, assembly_exponent: float) -> None:
        self.alpha = cal["alpha_seconds"]
        self.beta = cal["beta_seconds_per_byte"]
        self.d = base["d"]
        self.leaf = base["leaf_size"]
        self.matrix_free = base["matrix_free"]
        # stored rows and neuron-basis products gather x (n x k); the matrix-free 1D
        # value-coordinate product swaps halos
        self.gathers = base["basis"] == "relu" or not self.matrix_free
        self.samples = base["samples"]
        self.growth = growth
        self.node = fit_node_costs(base)
        one = base["per_rank"][0]
        n = base["n"]
        self.base_n = n
        self.base_assemble = one["cpu_assemble"]
        self.base_network = one["cpu_network"]
        self.base_ranks = len(base["per_rank"])
        self.split_network = base["d"] == 1  # a 1D network is split by rank
        self.assembly_exponent = assembly_exponent
        # stored rows: 2 n^2 k flops of GEMM; matrix-free 1D: O(n / P) per column and rank
        work = n * self.samples * (1 if self.matrix_free else 2 * n)
        self.seconds_per_sketch_unit = one["cpu_sketch"] / work
        self.seconds_solve_per_row = one["cpu_solve"] / n

    def rank(self, size: float) -> float:
        """Skeleton rank of a node with ``size`` neurons under it."""
        g = self.growth
        return min(size, max(1.0, g["constant"] * size ** g["exponent"]))

    def widths(self, n: int) -> list[int]:
        """Sketch widths of the constructions ``distgn.solvers.hss.distributed.factor`` makes:
        from 24, doubled (at least to the top rank + 20) until the top rank is 10 below the
        width."""
        widths = [DEFAULT_SAMPLES]
        while widths[-1] < n:
            top = int(min(self.rank(n / 2), widths[-1]))
            if top + OVERSAMPLE <= widths[-1]:
                break
            widths.append(max(2 * widths[-1], top + 2 * OVERSAMPLE))
        return widths

    def construction(self, n: int, P: int, k: int) -> dict:
        """Seconds and bytes of one construction with sketch width k (ranks capped at k)."""

        def rank(size: float) -> float:
            return min(self.rank(size), k)

        rows = n / P
        per_node, per_flop = self.node["seconds_per_node"], self.node["seconds_per_flop"]
        sketch = self.seconds_per_sketch_unit * rows * k * (1 if self.matrix_free else 2 * n)
        gather_bytes = 8.0 * k * (n * (P - 1) / P if self.gathers else 2)
        if P > 1 and self.gathers:  # Allgatherv of the sketched block (ring algorithm)
            sketch += self.alpha * math.log2(P) + self.beta * gather_bytes
        elif P > 1:  # one halo row to each neighbour
            sketch += 2 * self.alpha + self.beta * gather_bytes
        size = rows
        while size > self.leaf:  # leaves of the rank's own subtree
            size /= 2
        count = rows / size
        local = count * (per_node + per_flop * node_flops(size, k, rank(size)))
        while count >= 2:  # merges inside the rank's subtree
            count /= 2
            size *= 2
            local += count * (per_node + per_flop * node_flops(2 * rank(size / 2), k, rank(size)))
        merge = nbytes = 0.0
        for j in range(math.ceil(math.log2(P)) if P > 1 else 0):  # one message per level
            size = rows * 2 ** (j + 1)
            r = rank(size / 2)
            summary = 8.0 * (3 * r * k + r * r + r)  # sample, local, omega; transfer; index
            nbytes += summary
            merge += (
                self.alpha
                + self.beta * summary
                + per_node
                + per_flop * node_flops(2 * r, k, rank(size))
            )
        return {
            "sketch": sketch,
            "local": local,
            "merge": merge,
            "bytes": nbytes,
            "gather_bytes": gather_bytes,
        }

    def predict(self, n: int, P: int) -> dict:
        """Seconds per phase (the slowest rank, one core per rank) and per-rank memory and
        traffic for n on P."""
        # the network and its tree: in 1D each rank its neurons, ~ n / P; else whole on every
        # rank, ~ n log n; then the rank's block rows (stored: n^2 / P entries; 1D matrix-free:
        # its part of the value-coordinate system, ~ n / P)
        if self.split_network:
            network = self.base_network * (n / self.base_n) * self.base_ranks / P
        else:
            network = self.base_network * (n / self.base_n) * math.log(n) / math.log(self.base_n)
        assemble = network + self.base_assemble * (n / self.base_n) ** self.assembly_exponent / P
        widths = self.widths(n)
        passes = [self.construction(n, P, k) for k in widths]
        total = {key: sum(p[key] for p in passes) for key in passes[0]}
        levels_up = math.ceil(math.log2(P)) if P > 1 else 0
        solve = self.seconds_solve_per_row * n / P + levels_up * 2 * (
            self.alpha + self.beta * 8 * self.rank(n / 2)
        )
        factor = total["sketch"] + total["local"] + total["merge"]
        return {
            "n": n,
            "ranks": P,
            "sketch_widths": widths,
            "seconds_assemble": assemble,
            "seconds_sketch": total["sketch"],
            "seconds_factor_local": total["local"],
            "seconds_factor_merge": total["merge"],
            "seconds_factor": factor,
            "seconds_solve": solve,
            "seconds_total": assemble + factor + solve,
            "bytes_sent_factor": passes[-1]["bytes"],
            "bytes_received_sketch": passes[-1]["gather_bytes"],
            "messages_factor": levels_up,
            "stored_bytes_per_rank": 8.0 * n / P * (self.leaf if self.matrix_free else n),
            "sketch_bytes_per_rank": 16.0 * n / P * widths[-1],
        }


def slope_of(x: list[float], y: list[float]) -> float:
    """Exponent p of ``y ~ C x^p`` by least squares in log-log (nan with fewer than 2 n)."""
    if len(set(x)) < 2:
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def measured_phases(meas: dict) -> dict:
    """CPU seconds per phase of the slowest rank (``seconds_*`` keys; ``assemble`` includes the
    network and its tree, ``distributed_assemble`` does not), and their sum."""
    ranks = meas["per_rank"]
    slow = {
        "seconds_assemble": max(pr["cpu_network"] + pr["cpu_assemble"] for pr in ranks),
        **{f"seconds_{key}": max(pr[f"cpu_{key}"] for pr in ranks) for key in ("factor", "solve")},
    }
    slow["seconds_total"] = sum(slow.values())
    slow["seconds_distributed_assemble"] = max(pr["cpu_assemble"] for pr in ranks)
    return slow


def model(args: argparse.Namespace) -> None:
    """Fit, validate and extrapolate; write PREFIX.json, PREFIX.md and PREFIX.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = json.loads(Path(args.calibration).read_text())
    fastest: dict[tuple[int, int], dict] = {}
    for path in args.measurements:  # repeated runs of one (n, P): keep the fastest
        m = json.loads(Path(path).read_text())
        key = (m["n"], m["ranks"])
        if key not in fastest or (
            measured_phases(m)["seconds_total"] < measured_phases(fastest[key])["seconds_total"]
        ):
            fastest[key] = m
    runs = [fastest[key] for key in sorted(fastest)]
    base = min((m for m in runs if m["ranks"] == 1), key=lambda m: -m["n"])
    growth = rank_growth(runs)
    singles = [m for m in runs if m["ranks"] == 1]
    exponent = slope_of(
        [m["n"] for m in singles],
        [measured_phases(m)["seconds_distributed_assemble"] for m in singles],
    )
    if math.isnan(exponent) or not base["matrix_free"]:
        # stored rows: n^2 entries, whose cost per entry does not fall with n; at the measured n
        # fixed costs make the fitted exponent smaller than 2 (2D: 1.16 over n = 1024 .. 2048)
        exponent = max(2.0, 0.0 if math.isnan(exponent) else exponent)
    mdl = Model(cal, base, growth, exponent)
    validation = []
    for m in runs:
        pred, meas = mdl.predict(m["n"], m["ranks"]), measured_phases(m)
        row = {"n": m["n"], "ranks": m["ranks"], "fitted_on": m is base}
        for key in ("seconds_assemble", "seconds_factor", "seconds_solve", "seconds_total"):
            row[f"measured_{key}"] = meas[key]
            row[f"predicted_{key}"] = pred[key]
            row[f"error_{key}"] = pred[key] / meas[key] - 1
        row["measured_bytes_sent"] = int(sum(m["bytes_sent_per_level"]))
        row["predicted_bytes_sent"] = pred["bytes_sent_factor"]
        row["measured_peak_memory_bytes"] = max(pr["peak_memory_bytes"] for pr in m["per_rank"])
        validation.append(row)
    ranks = [2**i for i in range(6, 13)]
    sizes = args.extrapolate_n
    extrapolation = [mdl.predict(n, P) for n in sizes for P in ranks if n >= 2 * P * mdl.leaf]
    held_out = [r for r in validation if not r["fitted_on"]]
    summary = {
        "calibration": {
            k: cal[k] for k in ("alpha_seconds", "beta_seconds_per_byte", "flop_rates")
        },
        "node_costs": mdl.node,
        "rank_growth": growth,
        "assembly_exponent": mdl.assembly_exponent,
        "seconds_per_sketch_unit": mdl.seconds_per_sketch_unit,
        "max_abs_error_total_held_out": max(
            (abs(r["error_seconds_total"]) for r in held_out), default=math.nan
        ),
        "max_abs_error_factor_held_out": max(
            (abs(r["error_seconds_factor"]) for r in held_out), default=math.nan
        ),
        "validation": validation,
        "extrapolation": extrapolation,
        "command": " ".join(sys.argv),
    }
    prefix = Path(args.output)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    write_markdown(prefix.with_suffix(".md"), summary)
    fig, (ax_v, ax_x) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, mark in (("seconds_total", "o"), ("seconds_factor", "s")):
        ax_v.plot(
            [r[f"measured_{key}"] for r in validation],
            [r[f"predicted_{key}"] for r in validation],
            mark,
            label=key[8:],
        )
    lim = [
        min(r["measured_seconds_factor"] for r in validation) / 2,
        2 * max(r["measured_seconds_total"] for r in validation),
    ]
    ax_v.loglog(lim, lim, "k:", label="exact")
    ax_v.set(
        xlabel="measured CPU seconds (slowest rank)",
        ylabel="predicted seconds",
        title=f"validation, held-out max error: total "
        f"{summary['max_abs_error_total_held_out']:.0%}, factor "
        f"{summary['max_abs_error_factor_held_out']:.0%}",
    )
    ax_v.legend(fontsize=8)
    for n in sizes:
        pts = [e for e in extrapolation if e["n"] == n]
        if pts:
            ax_x.loglog(
                [e["ranks"] for e in pts],
                [e["seconds_total"] for e in pts],
                "o-",
                label=f"n = {n:.0e}",
            )
    ax_x.set(
        xlabel="ranks P", ylabel="predicted seconds (assembly + factor + solve)", title=args.title
    )
    ax_x.legend(fontsize=8, loc="upper right")
    fig.text(0.5, -0.02, "\n".join(ASSUMPTIONS), ha="center", va="top", fontsize=7.5, wrap=True)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=110, bbox_inches="tight")
    for path in (
        prefix.with_suffix(".json"),
        prefix.with_suffix(".md"),
        prefix.with_suffix(".png"),
    ):
        print(path)


ASSUMPTIONS = [
    "Assumptions: one rank per core; alpha, beta from a 2-rank ping-pong on this machine (shared "
    "memory), gamma fitted per node (overhead + effective flop time) on the 1-rank run;",
    "assembly ~ n^a / P (stored rows, a = max(2, fitted)) or ~ n^a on every rank (1D "
    "matrix-free: the value-coordinate system is built whole on each rank), a fitted on 1-rank "
    "runs of two or more n;",
    "skeleton ranks r(s) = c s^a fitted to the measured nodes of 4+ leaves; sketch rate from "
    "the 1-rank run; each rank draws its own rows of Omega; the neuron-basis product gathers the "
    "n x k block (8 n k bytes per rank), the 1D value-coordinate product sends one halo row per "
    "neighbour and costs O(n k / P) matrix-free;",
    "levels above the rank level: one message of a skeleton summary per level; no network "
    "contention, no load imbalance beyond the measured tree. Measured and predicted times are CPU "
    "seconds of the slowest rank (2 cores: P = 4 oversubscribed).",
]


def write_markdown(path: Path, summary: dict) -> None:
    """Validation and extrapolation tables in Markdown."""
    lines = [
        "| n | P | measured total s | predicted total s | error | measured factor s | "
        "predicted factor s | error | bytes sent measured / predicted | peak memory "
        "(largest rank) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["validation"]:
        lines.append(
            f"| {r['n']} | {r['ranks']}{' (fit)' if r['fitted_on'] else ''} | "
            f"{r['measured_seconds_total']:.3g} | {r['predicted_seconds_total']:.3g} | "
            f"{r['error_seconds_total']:+.0%} | {r['measured_seconds_factor']:.3g} | "
            f"{r['predicted_seconds_factor']:.3g} | {r['error_seconds_factor']:+.0%} | "
            f"{r['measured_bytes_sent']} / {r['predicted_bytes_sent']:.0f} | "
            f"{r['measured_peak_memory_bytes'] / 2**20:.0f} MiB |"
        )
    lines += [
        "",
        "| n | P | assemble s | sketch s | factor (local) s | factor (merge) s | "
        "solve s | total s | stored bytes / rank | bytes sent (factor) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary["extrapolation"]:
        lines.append(
            f"| {e['n']:.0e} | {e['ranks']} | {e['seconds_assemble']:.3g} | "
            f"{e['seconds_sketch']:.3g} | {e['seconds_factor_local']:.3g} | "
            f"{e['seconds_factor_merge']:.3g} | {e['seconds_solve']:.3g} | "
            f"{e['seconds_total']:.3g} | {e['stored_bytes_per_rank']:.2e} | "
            f"{e['bytes_sent_factor']:.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: calibrate, measure (both under mpiexec) or model."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--repeats", type=int, default=50)
    c.add_argument("-o", "--output", required=True)
    m = sub.add_parser("measure")
    m.add_argument("config")
    m.add_argument("--set", action="append", default=[])
    m.add_argument("-o", "--output", required=True)
    f = sub.add_parser("model")
    f.add_argument("calibration")
    f.add_argument("measurements", nargs="+")
    f.add_argument(
        "--extrapolate-n",
        type=lambda t: [int(float(x)) for x in t.split(",")],
        default=[10**5, 10**6, 10**7],
    )
    f.add_argument("--title", default="extrapolation")
    f.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    if args.step == "model":
        model(args)
        return
    result = (
        calibrate(comm, args.repeats)
        if args.step == "calibrate"
        else measure(comm, args.config, args.set)
    )
    if comm.rank == 0:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        print(args.output)


if __name__ == "__main__":
    main()
