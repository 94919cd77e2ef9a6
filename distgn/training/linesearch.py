"""The SgGN step length: minimisation of a piecewise smooth function along a ray.

The step length is the minimiser along the path (``line_minimum``): bracketing from ``gamma = 1``
(expanding by the golden ratio while the loss decreases, backtracking by safeguarded quadratic
interpolation until it decreases, giving up where the predicted decrease is below J's rounding
level), then the zero of the exact derivative ``dJ/dgamma = grad_r J . p`` in the bracket by
Brent's root finder, to relative accuracy 4 eps (function values alone resolve a minimiser only
to ``sqrt(eps)``, which would let serial and parallel runs drift apart). J is only piecewise
smooth along the path (kinks where breakpoints cross each other or the target's
discontinuities): a derivative that jumps from < 0 to > 0 within 1e-8 of the best bracket point
is a kink minimum, taken at once (Gauss-Newton steps often end on one: a breakpoint landing on a
jump of u); where the derivative does not change sign in the bracket, Brent's minimiser on J.
There is no cap at 1 and no tuned damping constant.

``line_minimum`` is rank-local given a ``phi`` (which may itself be collective).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.optimize

from distgn.training.objective import EPS

GOLDEN = (1 + 5**0.5) / 2
# Relative accuracy of the line minimiser's root finder: to rounding, so that serial and
# parallel runs (whose slopes differ in the last digits) find the same step.
ROOT_RTOL = 4 * EPS
# A sign change of the slope within KINK_RTOL of the best bracket point is taken as a kink there.
KINK_RTOL = 1e-8


def line_minimum(phi: Callable[[float], float], phi0: float, tiny: float,
                 slope: Callable[[float], tuple[float, float]] | None = None,
                 slope0: float = -np.inf) -> tuple[float, float, int]:
    """Minimise ``phi`` along ``gamma > 0`` from ``phi(0) = phi0``; ``slope(gamma)`` returns
    ``(phi(gamma), phi'(gamma))`` (one evaluation of both where that is cheaper).

    Bracketing starts at ``gamma = 1`` and expands by the golden ratio while phi decreases, or
    backtracks until phi drops below ``phi0``: to the minimiser of the quadratic through
    ``phi0``, ``slope0`` and ``phi(b)``, kept within ``[b / 10, b / golden]``. The search gives up
    below ``tiny``, or where the decrease the slope predicts, ``|slope0| gamma``, is under the
    rounding level ``4 eps |phi0|`` of phi. The bracket ``a < b < c`` (``phi(b)`` below both ends)
    is then refined: with the derivative ``slope`` (``slope0`` at 0), when it changes sign on
    ``[a, c]``: b itself if the sign changes within ``KINK_RTOL b`` of it (a kink), else Brent's
    root finder on it to the relative accuracy ``ROOT_RTOL`` on that side of b; otherwise (or if
    that root is worse than b) by Brent's minimiser on phi to ``sqrt(eps)``, the accuracy function
    values allow.

    Returns
    -------
    gamma, value : float
        The step and ``phi(gamma)``; ``(0, phi0)`` when no step decreases phi.
    evaluations : int
        Number of evaluations of phi and slope (an evaluation of both counts once).
    """
    values: dict[float, float] = {0.0: phi0}
    slopes: dict[float, float] = {0.0: slope0}

    def f(gamma: float) -> float:
        gamma = float(gamma)
        if gamma not in values:
            value = phi(gamma)
            values[gamma] = value if np.isfinite(value) else np.inf
        return values[gamma]

    def df(gamma: float) -> float:
        gamma = float(gamma)
        if gamma not in slopes:
            value, slopes[gamma] = slope(gamma)
            values.setdefault(gamma, value if np.isfinite(value) else np.inf)
        return slopes[gamma]

    a, b = 0.0, 1.0
    if f(b) < phi0:
        c = b + GOLDEN * (b - a)
        while f(c) < f(b) and c < 1 / tiny:
            a, b, c = b, c, c + GOLDEN * (c - b)
    else:
        floor = max(tiny, 4 * EPS * abs(phi0) / abs(slope0) if slope0 < 0 else 0.0)
        while f(b) >= phi0 and b > floor:
            c = b
            curvature = (f(b) - phi0 - slope0 * b) / (b * b)
            trial = -0.5 * slope0 / curvature if np.isfinite(curvature) and curvature > 0 else 0.0
            b = float(np.clip(trial, 0.1 * b, b / GOLDEN))
        if f(b) >= phi0:
            return 0.0, phi0, len(values) - 1
    root = None
    if f(c) > f(b) and slope is not None and df(a) < 0 < df(c):
        # The slope changes sign next to b, or b sits on a kink of phi where it jumps from < 0 to
        # > 0 (e.g. a breakpoint landing on a jump of u, where Gauss-Newton steps often end): b
        # is then the minimiser to KINK_RTOL, which the root finder would close in on bit by bit.
        side = 1.0 if df(b) < 0 else -1.0
        near = b * (1.0 + side * KINK_RTOL)
        if df(b) == 0 or side * df(near) > 0:
            root = b
        else:
            root = scipy.optimize.brentq(df, *((near, c) if side > 0 else (a, near)),
                                         rtol=ROOT_RTOL)
        if not f(root) <= f(b):
            root = None
    if root is None and f(c) > f(b):
        scipy.optimize.minimize_scalar(f, bracket=(a, b, c), method="brent",
                                       options={"xtol": EPS**0.5})
    gamma = root if root is not None else min(values, key=lambda g: (values[g], -g))
    return gamma, values[gamma], len(values.keys() | slopes.keys()) - 1
