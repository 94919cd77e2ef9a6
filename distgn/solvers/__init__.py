"""Linear solvers for the distgn operators: one entry, ``factor(operator, config)``.

SgGN, the CLI and the benchmarks call only ``factor`` and the ``Factorization`` it returns
(distgn.solvers.base), so they never branch on the back end:

- ``hss`` (distgn.solvers.hss): the distributed hierarchical factorization;
- ``krylov`` (distgn.solvers.krylov): PETSc KSP with structured preconditioners (distgn.solvers.hat,
  the hss factorization, block Jacobi);
- ``dense`` (distgn.solvers.dense): LAPACK / ScaLAPACK Cholesky, the reference.

The back ends that use PETSc (krylov, dense) are imported on first use, inside ``factor``:
petsc4py takes its options from the command line only when ``petsc4py.PETSc`` is first imported,
so ``initialize`` (called by the CLI with the PETSc options it found) must come first. This is the
one reason for the deferred imports in distgn (tests/test_architecture.py checks it). ``factor`` is
collective over ``operator.comm``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from distgn.config import SolverConfig
from distgn.errors import InputError
from distgn.operator import Operator
from distgn.solvers.base import STATS_KEYS, Factorization, backward_error
from distgn.solvers.hss import factor as factor_hss

__all__ = [
    "KINDS",
    "STATS_KEYS",
    "Factorization",
    "backward_error",
    "factor",
    "initialize",
    "log_stage",
]

KINDS = ("hss", "krylov", "dense")


def initialize(options: list[str]) -> None:
    """Start PETSc with ``options`` (``-name [value]`` words) in its options database. Rank-local.

    Must run before anything imports ``petsc4py.PETSc``; without it PETSc starts with no options
    on first use.
    """
    import petsc4py

    petsc4py.init([sys.argv[0], *options])


@contextmanager
def log_stage(name: str) -> Iterator[None]:
    """Run the block inside the PETSc log stage ``name`` (shown by ``-log_view``). Collective."""
    from distgn.solvers.petsc import log_stage as petsc_stage

    with petsc_stage(name):
        yield


def factor(operator: Operator, config: SolverConfig) -> Factorization:
    """Factor (or set up a solver for) ``operator`` with back end ``config.kind``. Collective."""
    if config.kind == "hss":
        return factor_hss(operator, config)
    if config.kind == "krylov":
        from distgn.solvers.krylov import factor as factor_krylov

        return factor_krylov(operator, config)
    if config.kind == "dense":
        from distgn.solvers.dense import factor as factor_dense

        return factor_dense(operator, config)
    raise InputError(f"config key solver.kind = {config.kind!r} is not one of {', '.join(KINDS)}")
