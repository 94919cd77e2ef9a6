"""Integration domains: intervals, convex polygons and boxes.

Owns the geometry every assembly routine needs (dimension, measure, bounding box, vertices) and
validates it. Rank-local: nothing here calls MPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distgn.errors import InputError


@dataclass(frozen=True)
class Domain:
    """A bounded convex domain in R^d.

    Attributes
    ----------
    kind : {"interval", "box", "polygon"}
        How the domain was described.
    bounds : ndarray, shape (d, 2)
        Bounding box ``[[lo_1, hi_1], ..., [lo_d, hi_d]]`` (exactly the domain for intervals and
        boxes).
    vertices : ndarray, shape (V, 2) or None
        Counter-clockwise vertices of the convex polygon (2D only; a 2D box has its 4 corners).
    """

    kind: str
    bounds: np.ndarray
    vertices: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Space dimension d."""
        return int(self.bounds.shape[0])

    @property
    def measure(self) -> float:
        """Length, area or volume of the domain."""
        if self.vertices is not None:
            x, y = self.vertices[:, 0], self.vertices[:, 1]
            return float(0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        return float(np.prod(self.bounds[:, 1] - self.bounds[:, 0]))

    @property
    def center(self) -> np.ndarray:
        """Centre of the bounding box (the vertex mean for polygons)."""
        if self.vertices is not None:
            return self.vertices.mean(axis=0)
        return self.bounds.mean(axis=1)

    @property
    def corners(self) -> np.ndarray:
        """Extreme points (polygon vertices or box corners), shape (K, d)."""
        if self.vertices is not None:
            return self.vertices
        grids = np.meshgrid(*self.bounds, indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1)

    def contains(self, x: np.ndarray, slack: float = 0.0) -> np.ndarray:
        """Whether points ``x`` (N, d) lie in the closed domain (enlarged by ``slack``)."""
        x = np.atleast_2d(x)
        if self.vertices is None:
            lo, hi = self.bounds[:, 0] - slack, self.bounds[:, 1] + slack
            return np.all((x >= lo) & (x <= hi), axis=1)
        v, e = self.vertices, np.roll(self.vertices, -1, axis=0) - self.vertices
        cross = e[None, :, 0] * (x[:, None, 1] - v[None, :, 1]) - e[None, :, 1] * (
            x[:, None, 0] - v[None, :, 0]
        )
        return np.all(cross >= -slack * np.linalg.norm(e, axis=1), axis=1)

    def to_attrs(self) -> dict[str, object]:
        """HDF5 attributes describing the domain."""
        attrs: dict[str, object] = {"domain_kind": self.kind, "domain_bounds": self.bounds}
        if self.vertices is not None:
            attrs["domain_vertices"] = self.vertices
        return attrs


def interval(lo: float, hi: float) -> Domain:
    """The interval [lo, hi]."""
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"domain.bounds = [{lo}, {hi}] is not an interval with L < R")
    return Domain("interval", np.array([[float(lo), float(hi)]]))


def box(bounds: np.ndarray | list) -> Domain:
    """The box ``[[x0, x1], [y0, y1], ...]``; in 2D it is also a polygon."""
    b = np.asarray(bounds, dtype=float)
    if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] < 1:
        raise InputError(f"domain.bounds = {bounds!r} must be [[x0, x1], [y0, y1], ...]")
    if not np.all(np.isfinite(b)) or np.any(b[:, 0] >= b[:, 1]):
        raise InputError(f"domain.bounds = {bounds!r} needs finite lo < hi in every dimension")
    if b.shape[0] == 1:
        return interval(b[0, 0], b[0, 1])
    vertices = None
    if b.shape[0] == 2:
        (x0, x1), (y0, y1) = b
        vertices = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return Domain("box", b, vertices)


def polygon(vertices: np.ndarray | list) -> Domain:
    """The convex polygon with the given vertices (any order; stored counter-clockwise)."""
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or v.shape[0] < 3 or not np.all(np.isfinite(v)):
        raise InputError(f"domain.vertices = {vertices!r} must be at least 3 finite [x, y] points")
    c = v.mean(axis=0)
    v = v[np.argsort(np.arctan2(v[:, 1] - c[1], v[:, 0] - c[0]))]
    e = np.roll(v, -1, axis=0) - v
    cross = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
    scale = np.max(np.abs(v - c)) ** 2
    if np.any(cross <= 1e-12 * scale):
        raise InputError(
            f"domain.vertices = {vertices!r} is not a strictly convex polygon "
            "(repeated, collinear or reflex vertices)"
        )
    bounds = np.stack([v.min(axis=0), v.max(axis=0)], axis=1)
    return Domain("polygon", bounds, v)
