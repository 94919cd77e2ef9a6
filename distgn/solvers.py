"""One interface for every linear solver back end: ``factor(operator, config) -> Factorization``.

SgGN, the CLI and the benchmarks call only this module, so they never branch on the back end.
All methods of a Factorization are collective over the operator's communicator; vectors are
block-row distributed in tree order (this rank's rows only).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from distgn.config import SolverConfig
from distgn.errors import InputError
from distgn.operator import Operator

KINDS = ("hss", "krylov", "dense")


class Factorization(Protocol):
    """A solver for ``M x = f`` with a fixed SPD operator M."""

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective."""

    def logdet(self) -> float:
        """``log det M`` of the (approximate) factorization. Collective."""

    def stats(self) -> dict:
        """JSON-ready statistics (e.g. max_rank, factor_bytes, iterations). Collective."""


def factor(operator: Operator, config: SolverConfig) -> Factorization:
    """Factor (or set up a solver for) ``operator`` with back end ``config.kind``. Collective."""
    if config.kind == "hss":
        from distgn.hss import factor as factor_hss

        return factor_hss(operator, config)
    if config.kind == "krylov":
        from distgn.krylov import factor as factor_krylov

        return factor_krylov(operator, config)
    if config.kind == "dense":
        from distgn.dense import factor as factor_dense

        return factor_dense(operator, config)
    raise InputError(f"config key solver.kind = {config.kind!r} is not one of {', '.join(KINDS)}")


def backward_error(operator: Operator, x: np.ndarray, f: np.ndarray, norm: float) -> float:
    """``||M x - f|| / (||M|| ||x|| + ||f||)`` (2-norms; ``norm`` estimates ||M||). Collective."""
    comm = operator.comm
    r = operator.matvec(x) - f
    sums = comm.allreduce(np.array([np.sum(r * r), np.sum(x * x), np.sum(f * f)]))
    rn, xn, fn = np.sqrt(sums)
    return float(rn / (norm * xn + fn))
