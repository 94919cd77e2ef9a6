"""Exact assembly of A, H, G and the target moments, by block rows.

``pair_integrals``, ``target_moments`` and ``target_integrals`` pick the exact routine for the
domain (1D closed forms, 2D polygon clipping, tensor quadrature for boxes in d >= 3) and are
rank-local. ``assemble_block_rows`` computes this rank's block rows in tree order; it never forms an
n x n array (rows are built in chunks of bounded size) and calls no MPI itself. With no matrices
requested (matrix-free) it costs O(n log n): the target moments and masses of its rows only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from distgn.domain import Domain
from distgn.problem import Problem
from distgn.targets import Target
from distgn.tree import ClusterTree

MATRICES = ("A", "H", "G")
CHUNK_ENTRIES = 1 << 21


def _backend(domain: Domain) -> tuple[object, np.ndarray]:
    """The exact routine for the domain: 1D closed forms, 2D polygons, d >= 3 quadrature."""
    if domain.dim == 1:
        return importlib.import_module("distgn.assembly.exact1d"), domain.bounds
    if domain.dim == 2:
        return importlib.import_module("distgn.assembly.polygon"), domain.vertices
    return importlib.import_module("distgn.assembly.quadrature"), domain.bounds


def pair_integrals(
    domain: Domain,
    W: np.ndarray,
    b: np.ndarray,
    I: np.ndarray,
    J: np.ndarray,
    which: tuple[str, ...] = MATRICES,
) -> dict[str, np.ndarray]:
    """Exact ``A``, ``H`` (|I|, |J|) and ``G`` (|I|, |J|, d+1, d+1) for neuron pairs I x J."""
    module, geometry = _backend(domain)
    return module.pair_integrals(geometry, W, b, np.asarray(I), np.asarray(J), which)


def relu_squares(domain: Domain, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int relu(w_i.x + b_i)^2`` for every neuron (the diagonal of A), shape (n,); intervals
    and polygons."""
    if domain.dim > 2:
        raise ValueError(f"relu_squares: exact squares in 1D and 2D only, not dim {domain.dim}")
    module, geometry = _backend(domain)
    return module.relu_squares(geometry, W, b)


def target_moments(
    domain: Domain, target: Target, W: np.ndarray, b: np.ndarray, I: np.ndarray
) -> np.ndarray:
    """``int u h_i xhat`` for neurons I, shape (|I|, d+1)."""
    module, geometry = _backend(domain)
    return module.target_moments(geometry, W, b, np.asarray(I), target)


def target_integrals(domain: Domain, target: Target) -> tuple[float, float]:
    """``(int u, int u^2)`` over the domain."""
    module, geometry = _backend(domain)
    return module.target_integrals(geometry, target)


def layer_matrix(G: np.ndarray) -> np.ndarray:
    """Reshape pair blocks (|I|, |J|, k, k) into the neuron-major matrix (|I| k, |J| k)."""
    m, n, k, _ = G.shape
    return G.transpose(0, 2, 1, 3).reshape(m * k, n * k)


@dataclass(frozen=True)
class BlockRows:
    """This rank's rows of the assembled problem, in tree order.

    Attributes
    ----------
    tree : ClusterTree
        The ordering and rank map.
    start, stop : int
        Tree-order neuron range owned by this rank.
    W, b : ndarray
        The neurons' parameters in tree order: all of them, or this rank's (a network split by
        rank, ``problem.Layout``).
    matrices : dict
        ``"A"``, ``"H"``: (m, n); ``"G"``: (m (d+1), n (d+1)), neuron-major; m = stop - start.
    moments : ndarray, shape (m, d+1), or None
        ``int u h_i xhat``; ``F_i = moments_i . r_i``. None when not assembled (the 1D
        value-coordinate solve integrates its own right-hand side).
    mass : ndarray, shape (m,), or None
        ``int phi_i`` (the coupling with the constant function, for the output bias); None with
        ``moments``.
    """

    tree: ClusterTree
    start: int
    stop: int
    W: np.ndarray
    b: np.ndarray
    matrices: dict[str, np.ndarray]
    moments: np.ndarray | None
    mass: np.ndarray | None

    @property
    def first(self) -> int:
        """Tree position of ``W[0]``: 0, or ``start`` when W, b hold this rank's neurons only."""
        return 0 if self.W.shape[0] == self.tree.n else self.start

    @property
    def F(self) -> np.ndarray:
        """Right-hand side ``F_i = int u phi_i`` of the local rows."""
        if self.moments is None:
            raise ValueError("BlockRows.F: the target moments were not assembled")
        r = np.column_stack([self.W, self.b])[self.start - self.first : self.stop - self.first]
        return np.einsum("ik,ik->i", self.moments, r)


def assemble_block_rows(
    problem: Problem,
    tree: ClusterTree,
    rank: int,
    which: tuple[str, ...] = MATRICES,
    moments: bool = True,
) -> BlockRows:
    """Assemble the block rows of ``rank`` (tree order), chunk by chunk, and with ``moments``
    the target moments and masses of its neurons. Rank-local.

    A network split by rank (``problem.layout``) has no matrix rows here (they need every
    neuron); its moments and masses are those of the rank's own neurons.
    """
    start, stop = tree.rank_range(rank)
    if problem.layout is None:
        W, b, first = problem.network.W[tree.perm], problem.network.b[tree.perm], 0
    elif which:
        raise ValueError("assemble_block_rows: matrix rows need the whole network")
    else:
        W, b, first = problem.network.W, problem.network.b, start
    n, k = tree.n, problem.domain.dim + 1
    J = np.arange(n) if which else None
    matrices = {
        name: np.empty((stop - start, n) if name != "G" else ((stop - start) * k, n * k))
        for name in which
    }
    step = max(1, CHUNK_ENTRIES // (n * (k * k if "G" in which else 1)))
    for lo in range(start, stop, step) if which else ():
        hi = min(lo + step, stop)
        part = pair_integrals(problem.domain, W, b, np.arange(lo, hi), J, which)
        for name in which:
            if name == "G":
                matrices[name][(lo - start) * k : (hi - start) * k] = layer_matrix(part[name])
            else:
                matrices[name][lo - start : hi - start] = part[name]
    if not moments:
        return BlockRows(tree, start, stop, W, b, matrices, None, None)
    I = np.arange(start, stop) - first
    return BlockRows(
        tree,
        start,
        stop,
        W,
        b,
        matrices,
        target_moments(problem.domain, problem.target, W, b, I),
        network_mass(problem.domain, W, b, I),
    )


# u = 1, declared constant: its 2D moments come in closed form (polygon.target_moments).
ONE = Target("one", lambda x: np.ones(x.shape[0]), constant=True)


def network_mass(domain: Domain, W: np.ndarray, b: np.ndarray, I: np.ndarray) -> np.ndarray:
    """``int phi_i`` for neurons I (the target moments of u = 1 applied to r_i)."""
    moments = target_moments(domain, ONE, W, b, I)
    return np.einsum("ik,ik->i", moments, np.column_stack([W[I], b[I]]))
