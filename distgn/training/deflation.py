"""Parametrisation and singular components of SgGN: normalisation, dead and coincident neurons.

Before each solve the neurons that make the matrix numerically singular are set aside; the counts
are reported per iteration:

- dead neurons (hyperplane outside the domain, or ``w_i = 0``): removed for good, ``c_i = 0``,
  recorded in the run file;
- GN step only: ``|c_i| <= drop_tol max|c|`` (D singular): not moved;
- coincident hyperplanes (``independent_neurons``): two neurons delta apart give the matrix an
  eigenvalue ~ ``delta^power`` (``SINGULAR_POWERS``), so they count as coincident below
  ``eps^(1/power)``; a cluster keeps one neuron per orientation; a cluster with both orientations,
  like a neuron active on the whole domain, generates affine functions, and only an independent
  set of generators is kept. When the solver still breaks down, the next of ``DEFLATION_RUNGS``
  rungs raises the tolerances and the solve is retried.

Everything here is rank-local (every rank holds the whole network).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from distgn.network import Network, activity
from distgn.problem import Problem
from distgn.training.objective import EPS


def normalise(network: Network) -> Network:
    """Rows scaled to ``|w_i| = 1`` with ``c_i`` rescaled, so v is unchanged (rows w = 0 kept)."""
    scale = np.linalg.norm(network.W, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    c = None if network.c is None else network.c * scale
    return replace(network, W=network.W / scale[:, None], b=network.b / scale, c=c)


def dead_neurons(problem: Problem, network: Network) -> np.ndarray:
    """Neurons active nowhere in the domain (including ``w_i = 0``)."""
    dead, _ = activity(network.W, network.b, problem.domain)
    return dead | np.all(network.W == 0, axis=1)


def _hyperplane_points(problem: Problem, network: Network) -> tuple[np.ndarray, float]:
    """Each neuron's normalised hyperplane ``(w, b + w . centre) / |w|`` and the domain radius."""
    domain = problem.domain
    radius = 0.5 * float(np.linalg.norm(domain.bounds[:, 1] - domain.bounds[:, 0]))
    norm = np.linalg.norm(network.W, axis=1)
    unit = network.W / norm[:, None]
    offset = (network.b / norm + unit @ domain.center) / radius
    return np.column_stack([unit, offset]), radius


def _extents(problem: Problem, network: Network) -> tuple[np.ndarray, np.ndarray]:
    """How far each neuron's active and inactive parts reach into the domain (relative to its
    radius): the largest positive and negative distances of the domain's corners from the
    hyperplane (0 when the part is empty)."""
    points, radius = _hyperplane_points(problem, network)
    corners = problem.domain.corners
    distance = ((corners - problem.domain.center) / radius) @ points[:, :-1].T + points[:, -1]
    return np.maximum(distance.max(axis=0), 0.0), np.maximum(-distance.min(axis=0), 0.0)


def coincident_clusters(
    problem: Problem, network: Network, index: np.ndarray, tau_same: float, tau_opposite: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of (nearly) coincident hyperplanes among the neurons ``index``. Rank-local.

    Two neurons are linked when their normalised hyperplanes are within ``tau_same`` (same
    orientation) or ``tau_opposite`` (opposite orientations); clusters are the connected components.

    Returns
    -------
    label : ndarray of int, shape (|index|,)
        Cluster of each neuron.
    sign : ndarray, shape (|index|,)
        +1 or -1: the orientation relative to the first neuron of its cluster.
    """
    points, _ = _hyperplane_points(problem, network.subset(index))
    m = index.size
    # Both orientations of every hyperplane, so a pair is found whichever way each neuron faces.
    both = np.vstack([points, -points])
    pairs = cKDTree(both).query_pairs(max(tau_same, tau_opposite), output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    same = (a < m) == (b < m)
    distance = np.linalg.norm(both[a] - both[b], axis=1)
    link = (a % m != b % m) & (distance <= np.where(same, tau_same, tau_opposite))
    graph = coo_matrix((np.ones(int(link.sum())), (a[link] % m, b[link] % m)), shape=(m, m))
    _, label = connected_components(graph, directed=False)
    first = np.zeros(label.max(initial=-1) + 1, dtype=int)
    first[label[::-1]] = np.arange(m)[::-1]
    sign = np.where(np.einsum("ij,ij->i", points[:, :-1], points[first[label], :-1]) >= 0, 1, -1)
    return label, sign


# Smallest eigenvalue of a matrix with two neurons whose hyperplanes are delta apart ~ delta^power,
# for (same, opposite) orientations. A: phi_i - phi_j = O(delta) everywhere, relu(z) - relu(-z') - z
# = O(delta) on a strip of width delta; G: (h_i -+ h_j)(xhat . r) = O(delta) on such a strip.
# Coincidence tolerance eps^(1/power) on rung 0; each further rung (used when the solver still
# breaks down, e.g. for triples, whose eigenvalue decays faster) adds 1 to the power.
SINGULAR_POWERS = {"A": (2, 3), "G": (2, 3)}
# A neuron active (or inactive) only on a strip of width delta along the boundary: phi_i (or
# relu(-z)), and h_i (xhat . r) on the strip, are O(delta^1.5) in L2.
THIN_POWER = 3
DEFLATION_RUNGS = 3


def _generated(matrix: str, vector: np.ndarray, everywhere: bool) -> np.ndarray:
    """Rows spanning the affine functions that a generator adds to ``matrix``'s feature span.

    A cluster with both orientations generates ``z = r . xhat`` (its hyperplane), and so does a
    neuron active on the whole domain in A. In G a neuron with ``h = 1`` on the whole domain, or
    two opposite ones on the same hyperplane (``h_i + h_j = 1``; ``everywhere``), bring every
    ``xhat_k``; two opposite ones delta apart bring ``xhat . r`` up to O(delta^1.5), the other
    ``xhat_k`` only up to O(delta^0.5).
    """
    k = vector.size
    if matrix == "G" and everywhere:
        return np.eye(k)
    return vector[None, :] / np.linalg.norm(vector)


def independent_neurons(
    problem: Problem,
    network: Network,
    candidates: np.ndarray,
    matrix: str,
    priority: np.ndarray | None = None,
    rung: int = 0,
) -> np.ndarray:
    """The neurons among ``candidates`` (mask) that keep ``matrix`` ("A" or "G") nonsingular.

    A neuron active on a part of the domain thinner than ``eps^(1/(THIN_POWER + rung))`` (relative
    to the domain radius) is left out, and one inactive on such a thin part counts as active on
    the whole domain (both are singular to working precision like a coincident pair). Hyperplanes
    closer than ``eps^(1/(power + rung))`` (``SINGULAR_POWERS``) are coincident; a
    cluster of coincident hyperplanes keeps at most one neuron per orientation, in the order of
    ``priority`` (default ``|c_i|``, highest first). Affine generators (``_generated``) are then
    kept in that order while their spans stay independent (relative tolerance ``eps^(1/3)``) of
    those kept before (and, in A, of the constant when c0 is used); for a dependent one the neuron
    (or the cluster member of lower priority) is dropped. Rank-local.
    """
    thin = EPS ** (1 / (THIN_POWER + rung))
    active, inactive = _extents(problem, network)
    index = np.flatnonzero(candidates & (active > thin))
    keep = np.zeros(network.n, dtype=bool)
    if index.size == 0:
        return keep
    same, opposite = (EPS ** (1 / (power + rung)) for power in SINGULAR_POWERS[matrix])
    c = np.zeros(network.n) if network.c is None else np.abs(network.c)
    c = c if priority is None else priority
    order = np.argsort(-c[index], kind="stable")
    label, sign = coincident_clusters(problem, network, index, same, opposite)
    points, _ = _hyperplane_points(problem, network.subset(index))
    affine = inactive[index] <= thin
    taken: dict[tuple[int, int], int] = {}
    for pos in order:
        taken.setdefault((int(label[pos]), int(sign[pos])), int(pos))
    kept = np.zeros(index.size, dtype=bool)
    kept[list(taken.values())] = True
    # Affine generators in priority order: (position to drop if dependent, spanned rows).
    full = EPS ** (1 / (1 + rung)) if matrix == "G" else -1.0
    generators = []
    for pos in order:
        partner = taken.get((int(label[pos]), -int(sign[pos])))
        if kept[pos] and affine[pos]:
            generators.append((pos, _generated(matrix, points[pos], True)))
        elif kept[pos] and partner is not None and sign[pos] > 0:
            drop = pos if c[index[pos]] < c[index[partner]] else partner
            exact = np.linalg.norm(points[pos] + points[partner]) <= full
            generators.append((drop, _generated(matrix, points[pos], exact)))
    k = problem.domain.dim + 1
    basis = np.eye(k)[-1:] if problem.output_bias and matrix == "A" else np.zeros((0, k))
    tolerance = EPS ** (1 / 3)
    for drop, rows in generators:
        residual = rows - (rows @ basis.T) @ basis
        if np.linalg.norm(residual, 2) > tolerance and basis.shape[0] + rows.shape[0] <= k:
            basis = np.vstack([basis, np.linalg.qr(residual.T)[0].T])
        else:
            kept[drop] = False
    keep[index[kept]] = True
    return keep
