"""The SgGN step length: backtracking from the Gauss-Newton step, with one extrapolation.

``line_search`` (docs/sggn.md, "Line search") tries the full Gauss-Newton step ``gamma = 1``
first. A step is accepted when it gives a sufficient decrease (Armijo,
``phi(gamma) <= phi(0) + ARMIJO gamma phi'(0)``); otherwise the step is cut to the minimiser of
the quadratic through ``phi(0)``, ``phi'(0)`` and ``phi(gamma)``, kept within
``[CUT_MIN gamma, gamma / 2]``. One more trial refines the accepted step, kept if it is lower: after
a cut, the vertex of the parabola through ``phi(0)``, the accepted and the last rejected value
when it lies between those two steps; when the first trial is accepted and the quadratic through
``phi(0)``, ``phi'(0)`` and it puts the minimiser beyond ``EXTRAPOLATE`` times the step (the
Gauss-Newton step is too short), that minimiser (at most ``MAX_GROWTH`` times the step).
The search gives up
where the decrease the slope predicts, ``|phi'(0)| gamma``, is under the rounding level
``4 eps |phi(0)|`` of phi, or after ``MAX_EVALUATIONS`` evaluations; the lowest value below
``phi(0)`` seen is then taken if there is one.

Only function values are used (a slope costs a gradient, about twice a loss), and every decision
compares values of one function computed the same way on every rank, so the step does not depend
on the number of ranks. Typical cost: 2-4 evaluations per iteration (``evaluations`` in the
history). ``line_search`` is rank-local given a ``phi`` (which may itself be collective).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from distgn.training.objective import EPS

ARMIJO = 1e-4
EXTRAPOLATE = 2.0
MAX_GROWTH = 4.0
MAX_EVALUATIONS = 30
# The smallest cut of a rejected step (the rounding floor is reached in at most ~9 cuts).
CUT_MIN = 0.1


def _quadratic_minimiser(phi0: float, slope0: float, gamma: float, value: float) -> float:
    """Minimiser of the quadratic through ``phi(0) = phi0``, ``phi'(0) = slope0`` and
    ``phi(gamma) = value`` (inf when it is not convex)."""
    curvature = (value - phi0 - slope0 * gamma) / (gamma * gamma)
    return -0.5 * slope0 / curvature if np.isfinite(curvature) and curvature > 0 else np.inf


def _parabola_vertex(phi0: float, a: float, fa: float, b: float, fb: float) -> float:
    """Vertex of the parabola through ``(0, phi0)``, ``(a, fa)``, ``(b, fb)`` (nan when it is not
    convex or the values are not finite)."""
    sa, sb = (fa - phi0) / a, (fb - phi0) / b
    curvature = (sb - sa) / (b - a)
    if not (np.isfinite(curvature) and curvature > 0):
        return np.nan
    return -(sa - curvature * a) / (2 * curvature)


def line_search(
    phi: Callable[[float], float], phi0: float, slope0: float, initial: float = 1.0
) -> tuple[float, float, int]:
    """Step length along a descent direction of ``phi`` (``phi(0) = phi0``, ``phi'(0) = slope0``).

    Parameters
    ----------
    phi : callable
        The loss along the path; non-finite values count as +inf.
    phi0, slope0 : float
        ``phi(0)`` and its derivative (< 0 for a descent direction).
    initial : float
        The first trial step.

    Returns
    -------
    gamma, value : float
        The step and ``phi(gamma)``; ``(0, phi0)`` when no step decreases phi.
    evaluations : int
        Number of evaluations of phi.
    """
    values: dict[float, float] = {}

    def f(gamma: float) -> float:
        if gamma not in values:
            value = float(phi(gamma))
            values[gamma] = value if np.isfinite(value) else np.inf
        return values[gamma]

    if not slope0 < 0 or not np.isfinite(phi0):
        return 0.0, phi0, 0
    floor = 4 * EPS * abs(phi0) / abs(slope0)
    gamma, rejected = initial, np.nan
    while gamma > floor and len(values) < MAX_EVALUATIONS:
        if f(gamma) <= phi0 + ARMIJO * gamma * slope0:
            break
        trial = _quadratic_minimiser(phi0, slope0, gamma, f(gamma))
        gamma, rejected = float(np.clip(trial, CUT_MIN * gamma, 0.5 * gamma)), gamma
    else:
        best = min(values, key=lambda g: (values[g], -g), default=0.0)
        return (
            (best, values[best], len(values))
            if values.get(best, np.inf) < phi0
            else (0.0, phi0, len(values))
        )
    if np.isnan(rejected):
        refined = _quadratic_minimiser(phi0, slope0, gamma, f(gamma))
        refined = min(refined, MAX_GROWTH * gamma) if refined > EXTRAPOLATE * gamma else np.nan
    elif np.isfinite(f(rejected)):
        refined = _parabola_vertex(phi0, gamma, f(gamma), rejected, f(rejected))
        refined = refined if gamma < refined < rejected else np.nan
    else:
        refined = np.nan
    if np.isfinite(refined) and f(refined) < f(gamma):
        gamma = refined
    return gamma, values[gamma], len(values)
