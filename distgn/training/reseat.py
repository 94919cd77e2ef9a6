"""Reseating of wasted neurons in SgGN (docs/sggn.md, "Reseating").

A neuron is wasted when it is dead, when the c-solve sets it aside as linearly dependent on the
others (a coincident pair of opposite orientations only adds an affine function, which other
neurons already give) or when its coefficient is too small for the Gauss-Newton step
(``|c_i| <= drop_tol max|c|``). ``reseated`` moves such neurons: in 1D to the middles of the cells
where ``int (v - u)^2`` is largest; in 2D to the candidate lines on which a new neuron
correlates best with the residual (``insertion_scores``, exact integrals). sggn.reseat keeps the
move only if the c-solve there lowers the loss. A basin hop (sggn.hop) moves the neuron
``hop_neuron`` chooses, by its contribution ``|c_i| ||phi_i||``, to the same places
(``moved``), whatever the loss. Everything here is rank-local.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from distgn.assembly import ONE, relu_squares, target_moments
from distgn.fit import cell_errors_1d
from distgn.network import Network
from distgn.problem import Problem
from distgn.training.deflation import dead_neurons, independent_neurons
from distgn.training.objective import network_moments

# At most n / RESEAT_SHARE neurons (at least one) are moved at a time, smallest |c_i| first.
RESEAT_SHARE = 16
# 2D: candidate lines through the centres of a CANDIDATE_GRID^2 grid over the bounding
# box, at CANDIDATE_ANGLES angles, both orientations.
CANDIDATE_GRID = 8
CANDIDATE_ANGLES = 8


def wasted_neurons(
    problem: Problem, network: Network, removed: np.ndarray, drop_tol: float
) -> np.ndarray:
    """Dead neurons and live ones that the c-solve would set aside as dependent (rung 0) or that
    the Gauss-Newton step leaves out (``|c_i| <= drop_tol max|c|``)."""
    live = ~removed
    c = np.abs(network.c)
    small = c <= drop_tol * np.max(c[live], initial=0.0)
    return removed | (live & small) | (live & ~independent_neurons(problem, network, live, "A"))


def _places_1d(problem: Problem, network: Network, count: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``count`` new (w, b) in 1D: breakpoints at the middles of the cells (between the
    breakpoints and the target's features) of largest ``int (v - u)^2``, largest first; w = 1
    (the caller keeps a moved neuron's orientation)."""
    nodes, cumulative = cell_errors_1d(
        problem.domain.bounds, network.W, network.b, network.c, network.c0, problem.target
    )
    errors = np.diff(cumulative)
    cells = np.argsort(-errors, kind="stable")[:count]
    cells = cells[errors[cells] > 0]
    points = 0.5 * (nodes[cells] + nodes[cells + 1])
    return np.ones((points.size, 1)), -points


def candidate_lines(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate neurons in 2D: unit normals at ``CANDIDATE_ANGLES`` angles (both orientations)
    through the centres of a ``CANDIDATE_GRID``-per-side grid over the bounding box, those
    crossing the domain: ``(W, b, grid point of each)``."""
    domain = problem.domain
    lo, hi = domain.bounds[:, 0], domain.bounds[:, 1]
    side = (np.arange(CANDIDATE_GRID) + 0.5) / CANDIDATE_GRID
    x, y = np.meshgrid(lo[0] + (hi[0] - lo[0]) * side, lo[1] + (hi[1] - lo[1]) * side)
    points = np.column_stack([x.ravel(), y.ravel()])
    theta = np.pi * np.arange(CANDIDATE_ANGLES) / CANDIDATE_ANGLES
    half = np.column_stack([np.cos(theta), np.sin(theta)])
    normals = np.vstack([half, -half])
    point = np.repeat(np.arange(points.shape[0]), normals.shape[0])
    W = np.tile(normals, (points.shape[0], 1))
    b = -np.einsum("ij,ij->i", W, points[point])
    alive = ~dead_neurons(problem, Network(W, b))
    return W[alive], b[alive], point[alive]


def insertion_scores(
    problem: Problem, network: Network, W: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """For candidate neurons (W, b): ``<v - u, phi>^2 / ||phi||^2``, the decrease of the loss
    when the candidate is added with its best coefficient and is orthogonal to the neurons (a
    lower bound otherwise). Exact integrals (``network_moments``, ``target_moments``,
    ``relu_squares``). Rank-local."""
    candidates = Network(W, b)
    rows = np.arange(W.shape[0])
    moments = network_moments(problem, candidates, rows, source=network)
    moments = moments - target_moments(problem.domain, problem.target, W, b, rows)
    if network.c0:
        moments = moments + network.c0 * target_moments(problem.domain, ONE, W, b, rows)
    r = np.column_stack([W, b])
    products = np.einsum("ik,ik->i", moments, r)
    squares = relu_squares(problem.domain, W, b)
    return np.where(squares > 0, products**2 / np.where(squares > 0, squares, 1.0), 0.0)


def _places(problem: Problem, network: Network, count: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``count`` new (w, b) in 2D: the ``candidate_lines`` of best
    ``insertion_scores`` (the best orientation and angle per grid point, best points first)."""
    W, b, point = candidate_lines(problem)
    scores = insertion_scores(problem, network, W, b)
    by_score = np.argsort(-scores, kind="stable")
    _, first = np.unique(point[by_score], return_index=True)
    order = by_score[np.sort(first)][:count]
    order = order[scores[order] > 0]
    return W[order], b[order]


def reseated(problem: Problem, network: Network, wasted: np.ndarray) -> tuple[Network, np.ndarray]:
    """``network`` with wasted neurons (at most ``n / RESEAT_SHARE``, smallest ``|c_i|`` first)
    moved to new places (``moved``), and the mask of those moved. Rank-local."""
    index = np.flatnonzero(wasted)
    index = index[np.argsort(np.abs(network.c[index]), kind="stable")]
    return moved(problem, network, index[: max(1, network.n // RESEAT_SHARE)])


def hop_neuron(problem: Problem, network: Network, rank: int) -> int:
    """The neuron a basin hop moves: the one of the ``rank``-th smallest contribution
    ``|c_i| ||phi_i||`` (counting from 0, cyclically; ``||phi_i||^2 = A_ii``, exact). Dead
    neurons contribute 0. Rank-local."""
    squares = relu_squares(problem.domain, network.W, network.b)
    contribution = np.abs(network.c) * np.sqrt(np.maximum(squares, 0.0))
    return int(np.argsort(contribution, kind="stable")[rank % network.n])


def moved(problem: Problem, network: Network, index: np.ndarray) -> tuple[Network, np.ndarray]:
    """``network`` with the neurons ``index`` (in that order, as many as there are places) moved
    to where the fit is worst, ``c_i = 0``, and the mask of those moved. Rank-local.

    1D: the middles of the cells of largest error, one per cell, the orientation kept.
    2D: the candidate lines of best insertion score, one per grid point.
    """
    place = _places_1d if problem.domain.dim == 1 else _places
    W_new, b_new = place(problem, network, index.size)
    index = index[: b_new.size]
    W, b, c = network.W.copy(), network.b.copy(), network.c.copy()
    if problem.domain.dim == 1:
        orientation = np.where(network.W[index, 0] < 0, -1.0, 1.0)
        W_new, b_new = W_new * orientation[:, None], b_new * orientation
    W[index], b[index], c[index] = W_new, b_new, 0.0
    mask = np.zeros(network.n, dtype=bool)
    mask[index] = True
    return replace(network, W=W, b=b, c=c), mask
