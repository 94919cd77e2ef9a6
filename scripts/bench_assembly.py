"""Assembly benchmark: time per rank, cost per entry and memory of exact block-row assembly.

Run under mpiexec with 1 and 2 ranks, e.g.

    mpiexec -n 2 python scripts/bench_assembly.py --dim 1 --sizes 1024,2048,4096,8192,16384

Prints one markdown table row per n (rank 0): the slowest rank's assembly time for A, H and G,
nanoseconds per computed pair (a pair yields one entry of A and H and a (d+1)^2 block of G), the
bytes of block rows per rank and the peak resident memory of the largest rank.
"""

from __future__ import annotations

import argparse
import resource
import time

from mpi4py import MPI

from distgn.assembly import MATRICES, assemble_block_rows
from distgn.config import load_config
from distgn.problem import build_problem
from distgn.tree import build_tree, neuron_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, choices=(1, 2), default=1)
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384")
    parser.add_argument("--matrices", default="A,H,G")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    which = tuple(args.matrices.split(","))
    assert set(which) <= set(MATRICES)
    domain = (
        ['domain.kind="interval"', "domain.bounds=[0.0, 1.0]"]
        if args.dim == 1
        else ['domain.kind="box"', "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]"]
    )
    if comm.rank == 0:
        print(
            "| d | n | ranks | seconds (max rank) | ns per pair | block-row bytes per rank "
            "| peak RSS per rank |\n|---|---|---|---|---|---|---|",
            flush=True,
        )
    for n in (int(s) for s in args.sizes.split(",")):
        cfg = load_config(
            None,
            [*domain, f"network.n={n}", 'network.init="random"', 'network.orientation="random"']
            if args.dim == 1
            else [*domain, f"network.n={n}", 'network.init="random"'],
        )
        problem = build_problem(cfg)
        perm = neuron_order(problem.domain, problem.network.W, problem.network.b)
        tree = build_tree(perm, comm.size, 64)
        best = float("inf")
        for _ in range(args.repeat):
            comm.Barrier()
            start = time.perf_counter()
            blocks = assemble_block_rows(problem, tree, comm.rank, which)
            elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
            best = min(best, elapsed)
            nbytes = comm.allreduce(sum(m.nbytes for m in blocks.matrices.values()), op=MPI.MAX)
            del blocks
        rows = max(tree.rank_range(p)[1] - tree.rank_range(p)[0] for p in range(comm.size))
        rss = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, op=MPI.MAX)
        if comm.rank == 0:
            print(
                f"| {args.dim} | {n} | {comm.size} | {best:.3f} | {1e9 * best / (rows * n):.1f} "
                f"| {nbytes / 2**20:.0f} MiB | {rss / 2**20:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
