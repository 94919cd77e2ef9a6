"""Distributed hierarchical (HSS) SPD solver: randomized nested compression and scaled ULV.

``factor(operator, config)`` builds an ``HSSFactorization`` of an ``Operator`` (block rows or
matrix-free) with the solver settings of a ``SolverConfig``; the object offers ``solve``,
``logdet`` and ``stats`` (all collective); ``distgn.solvers.petsc.FactorizationPC`` wraps it as a
PETSc PC of type python. Two compression schemes share the ULV kernels and the process tree:

- interpolative skeletons (``solver.compensation = "none"``): O(n), matrix-free capable, bytes
  per level independent of n; for tight tolerances (direct solves);
- Schur-compensated projections (``"schur"``): the approximation is SPD at any tolerance, for
  preconditioners; needs stored block rows.

``"auto"`` (the default) takes the compensated scheme for ``tol >= 1e-6`` with stored block rows.
Modules: ``compress`` (sketch, decompositions, per-node steps), ``ulv`` (serial node kernels),
``distributed`` (local subtrees and the process tree, all MPI).
"""

from __future__ import annotations

from distgn.config import SolverConfig
from distgn.errors import InputError
from distgn.operator import Operator
from distgn.solvers.hss.distributed import HSSFactorization
from distgn.solvers.hss.distributed import factor as factor_operator

__all__ = ["HSSFactorization", "factor", "compensated"]

COMPENSATIONS = ("auto", "schur", "none")
AUTO_SCHUR_TOL = 1e-6


def compensated(operator: Operator, config: SolverConfig) -> bool:
    """Whether ``config.compensation`` selects the Schur-compensated scheme for ``operator``.

    ``auto``: compensated when the tolerance is loose (``tol >= 1e-6``, a preconditioner) and the
    block rows are stored; interpolative skeletons otherwise (tight tolerances, matrix-free).
    """
    if config.compensation not in COMPENSATIONS:
        raise InputError(
            f"config key solver.compensation = {config.compensation!r} is not one "
            f"of {', '.join(COMPENSATIONS)}"
        )
    if config.compensation == "auto":
        return config.tol >= AUTO_SCHUR_TOL and operator.rows is not None
    return config.compensation == "schur"


def factor(operator: Operator, config: SolverConfig) -> HSSFactorization:
    """Factor ``operator`` at ``config.tol`` (sketch width ``config.sample_size``, 0 = adaptive).

    Collective over ``operator.comm``.
    """
    return factor_operator(
        operator, config.tol, config.sample_size, config.seed, compensated(operator, config)
    )
