"""Reseating of wasted neurons in 1D SgGN: a dead neuron, or one that the c-solve sets aside as
linearly dependent on the others (a coincident pair of opposite orientations spans an affine
function, which other neurons already give), is moved to the middle of the cell where the fit is
worst; the move is kept only when the c-solve there lowers the loss (docs/sggn.md, "Reseating").

Rank-local except ``reseat`` (collective over the context's communicator).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from distgn.fit import cell_errors_1d
from distgn.network import Network
from distgn.problem import Problem
from distgn.training.deflation import independent_neurons

# At most n / RESEAT_SHARE neurons (at least one) are moved at a time, smallest |c_i| first.
RESEAT_SHARE = 16


def wasted_neurons(
    problem: Problem, network: Network, removed: np.ndarray, drop_tol: float
) -> np.ndarray:
    """Dead neurons and live ones that the c-solve would set aside as dependent (rung 0) or that
    the Gauss-Newton step leaves out (``|c_i| <= drop_tol max|c|``)."""
    live = ~removed
    c = np.abs(network.c)
    small = c <= drop_tol * np.max(c[live], initial=0.0)
    return removed | (live & small) | (live & ~independent_neurons(problem, network, live, "A"))


def reseated(problem: Problem, network: Network, wasted: np.ndarray) -> tuple[Network, np.ndarray]:
    """``network`` with wasted neurons moved to the middles of the cells of largest error (one
    per cell, largest first; at most ``n / RESEAT_SHARE`` of them, smallest ``|c_i|`` first;
    ``c_i = 0``, orientation kept) and the mask of those moved. Rank-local."""
    nodes, cumulative = cell_errors_1d(
        problem.domain.bounds, network.W, network.b, network.c, network.c0, problem.target
    )
    errors = np.diff(cumulative)
    index = np.flatnonzero(wasted)
    index = index[np.argsort(np.abs(network.c[index]), kind="stable")]
    index = index[: max(1, network.n // RESEAT_SHARE)]
    cells = np.argsort(-errors, kind="stable")[: index.size]
    cells = cells[errors[cells] > 0]
    index = index[: cells.size]
    points = 0.5 * (nodes[cells] + nodes[cells + 1])
    w = np.where(network.W[index, 0] < 0, -1.0, 1.0)
    W, b, c = network.W.copy(), network.b.copy(), network.c.copy()
    W[index, 0], b[index], c[index] = w, -w * points, 0.0
    moved = np.zeros(network.n, dtype=bool)
    moved[index] = True
    return replace(network, W=W, b=b, c=c), moved
