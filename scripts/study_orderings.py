"""Study of 2D neuron orderings: HSS ranks of exact A versus tolerance (benchmarks/hss.md).

Usage::

    python scripts/study_orderings.py [--n 1000 2000] [--inits random uniform]

For every 2D ordering of ``distgn.tree.ORDERINGS``, prints one JSON line with the numerical
rank (singular values above ``tol`` times the largest) of the level-1 HSS block row
``A(I, I^c)`` (I = first half of the neurons in tree order, exact SVD), and the largest rank and
factor bytes of the HSS factorization (leaf 64) at each tolerance.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from mpi4py import MPI

from distgn.config import load_config
from distgn.operator import build
from distgn.problem import build_problem
from distgn.solvers.hss import factor
from distgn.tree import ORDERINGS

TOLS = (1e-2, 1e-4, 1e-8, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--inits", nargs="+", default=["random", "uniform"])
    args = parser.parse_args()
    for n in args.n:
        for init in args.inits:
            for ordering in (o for o in ORDERINGS if o not in ("auto", "breakpoint")):
                sets = [
                    f"network.n={n}",
                    f"network.init={init}",
                    "domain.kind=box",
                    "domain.bounds=[[0,1],[0,1]]",
                    f"solver.ordering={ordering}",
                    "solver.compensation=none",
                ]
                config = load_config(None, sets)
                op = build(build_problem(config), config.solver, MPI.COMM_SELF, "A")[0]
                half = n // 2
                sigma = np.linalg.svd(op.rows[:half, half:], compute_uv=False)
                block_ranks = {tol: int(np.count_nonzero(sigma > tol * sigma[0])) for tol in TOLS}
                hss = {}
                for tol in TOLS:
                    stats = factor(
                        op, load_config(None, sets + [f"solver.tol={tol}"]).solver
                    ).stats()
                    hss[tol] = (stats["max_rank"], stats["factor_bytes"])
                print(
                    json.dumps(
                        {
                            "n": n,
                            "init": init,
                            "ordering": ordering,
                            "level1_block_rank": {str(t): r for t, r in block_ranks.items()},
                            "hss_max_rank": {str(t): v[0] for t, v in hss.items()},
                            "hss_factor_mbytes": {
                                str(t): round(v[1] / 1e6, 2) for t, v in hss.items()
                            },
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
