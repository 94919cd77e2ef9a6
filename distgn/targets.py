"""Target functions u with their known discontinuities, kinks and sharp layers.

A target declares where it is not smooth so that right-hand-side integrals can split there: 1D
``points`` (jumps and kinks), ``singular`` points (where derivatives blow up; quadrature is graded
towards them) and ``layers`` (centre, width) of sharp transitions; 2D jump ``lines`` and
``circles``.
Rank-local: nothing here calls MPI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from distgn.domain import Domain
from distgn.errors import InputError

TargetFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Target:
    """A target function with its singular set.

    Attributes
    ----------
    name : str
        Built-in name or ``package.module:function``.
    func : callable
        Maps points (N, d) to values (N,).
    points : tuple of float
        1D abscissae where u or a derivative jumps.
    singular : tuple of float
        1D abscissae where a derivative is unbounded (e.g. ``|x - x0|^(2/3)`` at x0).
    layers : tuple of (float, float)
        1D sharp layers as (centre, width): quadrature refines within a few widths of the centre.
    lines : tuple of (ndarray, float)
        2D lines ``normal . x = offset`` across which u jumps.
    circles : tuple of (ndarray, float)
        2D circles (centre, radius) across which u jumps.
    constant : bool
        u is constant on each region cut out by its ``lines`` and ``circles`` (2D target moments
        then come in closed form, distgn.assembly.polygon).
    """

    name: str
    func: TargetFunction
    points: tuple[float, ...] = ()
    singular: tuple[float, ...] = ()
    layers: tuple[tuple[float, float], ...] = ()
    lines: tuple[tuple[np.ndarray, float], ...] = field(default=())
    circles: tuple[tuple[np.ndarray, float], ...] = field(default=())
    constant: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate u at points ``x`` of shape (N, d)."""
        return np.asarray(self.func(np.atleast_2d(x)), dtype=float).reshape(-1)


BUILTIN_1D = ("step", "tanh_layer", "power", "sine")
BUILTIN_2D = ("line_jump", "disk", "smooth")


def make_target(name: str, domain: Domain) -> Target:
    """Build the target ``name`` for ``domain``: a built-in name or ``package.module:function``."""
    if ":" in name:
        return _user_target(name)
    if name == "auto":
        name = {1: BUILTIN_1D[0], 2: BUILTIN_2D[0]}.get(domain.dim, "smooth")
    lo, hi = domain.bounds[:, 0], domain.bounds[:, 1]
    if domain.dim == 1 and name in BUILTIN_1D:
        L, R = float(lo[0]), float(hi[0])
        mid = 0.5 * (L + R)
        if name == "step":
            return Target(name, lambda x: (x[:, 0] >= mid).astype(float), points=(mid,))
        if name == "tanh_layer":
            width = 0.01
            return Target(name, lambda x: np.tanh((x[:, 0] - mid) / width), layers=((mid, width),))
        if name == "power":
            return Target(name, lambda x: np.abs(x[:, 0] - mid) ** (2.0 / 3.0), singular=(mid,))
        return Target(name, lambda x: np.sin(2.0 * np.pi * (x[:, 0] - L) / (R - L)))
    if domain.dim == 2 and name in BUILTIN_2D:
        center = domain.center
        if name == "line_jump":
            normal = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6)])
            offset = float(normal @ center)
            return Target(
                name,
                lambda x: (x @ normal >= offset).astype(float),
                lines=((normal, offset),),
                constant=True,
            )
        if name == "disk":
            radius = 0.25 * float(np.min(hi - lo))
            return Target(
                name,
                lambda x: (np.sum((x - center) ** 2, axis=1) <= radius**2).astype(float),
                circles=((center, radius),),
                constant=True,
            )
        scale = np.pi / (hi - lo)
        return Target(
            name,
            lambda x: (
                np.sin(2 * scale[0] * (x[:, 0] - lo[0])) * np.cos(scale[1] * (x[:, 1] - lo[1]))
            ),
        )
    if name == "smooth" and domain.dim > 2:
        scale = np.pi / (hi - lo)
        return Target(name, lambda x: np.prod(np.sin(scale * (x - lo)), axis=1))
    builtin = BUILTIN_1D if domain.dim == 1 else BUILTIN_2D if domain.dim == 2 else ("smooth",)
    raise InputError(
        f"target.name = {name!r} is not a built-in {domain.dim}D target "
        f"({', '.join(builtin)}) nor 'package.module:function'"
    )


def _user_target(spec: str) -> Target:
    """Import ``package.module:function`` as a target without declared singularities."""
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"target.name = {spec!r} cannot be imported: {exc}") from None
    if not callable(func):
        raise InputError(f"target.name = {spec!r} is not callable")
    return Target(spec, func)
