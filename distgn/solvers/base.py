"""What every linear solver back end offers: the ``Factorization`` protocol and its statistics.

A factorization solves ``M x = f`` with a fixed SPD operator M. All its methods are collective over
the operator's communicator; vectors are block-row distributed in tree order (this rank's rows).
It is a context manager: leaving the ``with`` block calls ``destroy()`` on every rank at once,
which frees what the back end owns (PETSc objects must be destroyed collectively; see
distgn.solvers.petsc).

Statistics schema (``stats()``, the same keys for every back end; README "Solver statistics"):

==================  =====  ======================================================================
key                 unit   meaning (reduction over ranks)
==================  =====  ======================================================================
``kind``            -      ``"hss"``, ``"krylov"`` or ``"dense"``
``seconds_factor``  s      factorization or set-up (KSP and preconditioner) wall time (max)
``seconds_solve``   s      wall time of the last ``solve`` call (max)
``factor_bytes``    B      memory held by the factorization or preconditioner on a rank (max)
==================  =====  ======================================================================

Each back end adds its own keys after these (e.g. ``max_rank`` for hss, ``iterations`` for krylov).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from distgn.operator import Operator

STATS_KEYS = ("kind", "seconds_factor", "seconds_solve", "factor_bytes")


class Factorization(Protocol):
    """A solver for ``M x = f`` with a fixed SPD operator M."""

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective."""

    def logdet(self) -> float:
        """``log det M`` of the (approximate) factorization. Collective."""

    def stats(self) -> dict:
        """JSON-ready statistics, ``STATS_KEYS`` first. Collective."""

    def destroy(self) -> None:
        """Free what the factorization owns. Collective."""

    def __enter__(self) -> Factorization:
        """The factorization itself."""

    def __exit__(self, *exc: object) -> None:
        """``destroy()``."""


class Disposable:
    """Context-manager behaviour for back ends that own nothing needing a collective destroy."""

    def destroy(self) -> None:
        """Nothing to free (memory is released by reference counting)."""

    def __enter__(self) -> Disposable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def backward_error(operator: Operator, x: np.ndarray, f: np.ndarray, norm: float) -> float:
    """``||M x - f|| / (||M|| ||x|| + ||f||)`` (2-norms; ``norm`` estimates ||M||). Collective."""
    comm = operator.comm
    r = operator.matvec(x) - f
    sums = comm.allreduce(np.array([np.sum(r * r), np.sum(x * x), np.sum(f * f)]))
    rn, xn, fn = np.sqrt(sums)
    return float(rn / (norm * xn + fn))
