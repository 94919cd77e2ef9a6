"""Serial kernels of the symmetric ULV factorization: one node at a time.

A node has an SPD diagonal block ``D`` (s x s) in its current coordinates and a basis of the
directions through which it couples to the rest of the matrix. A congruence ``x = G [u; z]`` makes
the ``s - r`` coordinates u decoupled from the rest; they are eliminated with a Cholesky factor
``L11`` of their block, and the r kept coordinates z go up with the Schur complement
``D22 - W W^T`` (``W = D21 L11^{-T}``). Two kinds of node:

- ``OrthogonalFactor``: G orthogonal, from the QR of the node's basis (the classical ULV of
  Chandrasekaran, Gu and Pals; backward stable, used with interpolative skeletons);
- ``ScaledFactor``: ``G = L^{-T} [Q_perp, Q]`` with ``L L^T = D`` and orthonormal Q, so that
  ``G^T D G = I``: nothing to eliminate, the kept block is the identity (the Schur-compensated
  scheme, where this makes the approximation SPD at any tolerance).

Every Cholesky factor is an SPD square root (shifted by a few eps ||D|| when Cholesky breaks
down), so the factorization is SPD by construction: it never breaks down and ``logdet`` is finite.
Rank-local: no MPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

EPS = np.finfo(float).eps
FLOOR = 8.0 * EPS
SMALL = 64  # blocks up to this size get their first shift from the smallest eigenvalue


@dataclass
class OrthogonalFactor:
    """Node factor with an orthogonal transform.

    Attributes
    ----------
    G : ndarray, shape (s, s)
        Orthogonal; its first ``s - r`` columns are the decoupled directions.
    L11 : ndarray, shape (s - r, s - r)
        Cholesky factor of the decoupled block.
    W : ndarray, shape (r, s - r)
        ``D21 L11^{-T}``.
    logdet : float
        ``log det (L11 L11^T)``.
    shift : float
        Largest diagonal shift added to make the node's blocks SPD (0 when none).
    norm : float
        The node's block norm (largest diagonal entry), the reference for ``shift``.
    """

    G: np.ndarray
    L11: np.ndarray
    W: np.ndarray
    logdet: float
    shift: float
    norm: float

    @property
    def nbytes(self) -> int:
        """Bytes held by the factor."""
        return int(self.G.nbytes + self.L11.nbytes + self.W.nbytes)

    def forward(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Upward solve step: (kept right-hand side for the parent, what the node keeps)."""
        c = self.G.T @ b
        y = lower_solve(self.L11, c[: self.L11.shape[0]])
        return c[self.L11.shape[0] :] - self.W @ y, y

    def backward(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Downward solve step: the node's solution from its stash and the kept solution z."""
        u = upper_solve(self.L11, y - self.W.T @ z)
        return self.G @ np.vstack([u, z])


@dataclass
class ScaledFactor:
    """Node factor with the Cholesky-scaled transform ``G = L^{-T} [Q_perp, Q]``.

    Attributes
    ----------
    L : ndarray, shape (s, s)
        Lower-triangular square root of the diagonal block.
    Q : ndarray, shape (s, r)
        Orthonormal kept directions in scaled coordinates.
    logdet : float
        ``log det (L L^T)``.
    shift : float
        Diagonal shift added to make the block SPD (0 when none).
    norm : float
        The block norm (largest diagonal entry), the reference for ``shift``.
    """

    L: np.ndarray
    Q: np.ndarray
    logdet: float
    shift: float
    norm: float

    @property
    def nbytes(self) -> int:
        """Bytes held by the factor."""
        return int(self.L.nbytes + self.Q.nbytes)

    def forward(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Upward solve step: (kept right-hand side for the parent, decoupled part kept here)."""
        w = lower_solve(self.L, b)
        kept = self.Q.T @ w
        return kept, w - self.Q @ kept

    def backward(self, decoupled: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Downward solve step: the node's solution from its decoupled part and z."""
        return upper_solve(self.L, decoupled + self.Q @ z)


NodeFactor = OrthogonalFactor | ScaledFactor


def spd_sqrt(
    D: np.ndarray, scale: float | None = None, floor: float = FLOOR
) -> tuple[np.ndarray, float, float]:
    """Lower-triangular ``L`` with ``L L^T = D + shift I``, the shift 0 whenever possible.

    Cholesky is tried first. When it breaks down (D numerically indefinite, e.g. cond(D) > 1/eps)
    or leaves a pivot below ``floor * scale`` (which would amplify rounding errors by more than
    1/floor), it is retried with the diagonal shift ``floor * scale`` (small blocks: plus the most
    negative eigenvalue), grown 8-fold until it succeeds: a modified Cholesky factorization. The
    change of D is a few ``eps * scale`` when the breakdown came from rounding, and the factor is
    always SPD. ``scale`` defaults to ``max(diag D)``; pass the norm of the whole matrix to make
    the shifts a backward perturbation of it (Schur complements can be far smaller than it).

    Returns
    -------
    L : ndarray
    logdet : float
        ``log det (L L^T)``.
    shift : float
        The diagonal shift added (0.0 when Cholesky of D itself was accepted).
    """
    D = 0.5 * (D + D.T)
    if D.shape[0] == 0:
        return np.zeros((0, 0)), 0.0, 0.0
    shift = 0.0
    if scale is None:
        scale = max(float(np.max(np.abs(np.diag(D)))), np.finfo(float).tiny)
    while True:
        try:
            L = np.linalg.cholesky(D + shift * np.eye(D.shape[0]) if shift else D)
            pivots = np.diag(L) ** 2
            if pivots.min() < floor * scale:
                raise np.linalg.LinAlgError("pivot below the floor")
            return L, float(np.sum(np.log(pivots))), float(shift)
        except np.linalg.LinAlgError:
            if shift:
                shift *= 8.0
            elif D.shape[0] <= SMALL:
                # Small blocks: start from the most negative eigenvalue (one cheap eigvalsh).
                shift = max(-float(np.linalg.eigvalsh(D)[0]), 0.0) + floor * scale
            else:
                shift = floor * scale


def lower_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L^{-1} b`` for lower-triangular L."""
    if b.size == 0:
        return np.zeros(b.shape)
    return sla.solve_triangular(L, b, lower=True, check_finite=False)


def upper_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L^{-T} b`` for lower-triangular L."""
    if b.size == 0:
        return np.zeros(b.shape)
    return sla.solve_triangular(L, b, lower=True, trans="T", check_finite=False)


def orthogonal_eliminate(
    D: np.ndarray, basis: np.ndarray, scale: float, floor: float = FLOOR
) -> tuple[OrthogonalFactor, np.ndarray, np.ndarray]:
    """Eliminate the directions orthogonal to ``basis`` (s x r) from a node with block D.

    ``scale`` (the norm of the whole matrix) and ``floor`` set the pivot floor of ``spd_sqrt``.

    Returns
    -------
    factor : OrthogonalFactor
    reduced_basis : ndarray, shape (r, r)
        The basis in the kept coordinates (``G^T basis = [0; reduced_basis]``).
    schur : ndarray, shape (r, r)
        The kept coordinates' diagonal block (Schur complement).
    """
    s, r = basis.shape
    # Make the whole block SPD first (a shift when the approximation is indefinite): then the
    # Schur complement stays PSD and ||W||^2 <= ||D22||, so nothing grows from level to level.
    L, _, shift = spd_sqrt(D, scale, floor)
    if shift:
        D = L @ L.T
    Q, R = np.linalg.qr(basis, mode="complete")
    G = np.hstack([Q[:, r:], Q[:, :r]])
    rotated = G.T @ D @ G
    m = s - r
    L11, logdet, shift11 = spd_sqrt(rotated[:m, :m], scale, floor)
    W = lower_solve(L11, rotated[:m, m:]).T
    schur = rotated[m:, m:] - W @ W.T
    factor = OrthogonalFactor(G, L11, W, logdet, max(shift, shift11), block_norm(D))
    return factor, R[:r], 0.5 * (schur + schur.T)


def root_factor(
    D: np.ndarray, scale: float | None = None, floor: float = FLOOR
) -> OrthogonalFactor:
    """The root: everything is eliminated (no kept coordinates)."""
    L, logdet, shift = spd_sqrt(D, scale, floor)
    return OrthogonalFactor(
        np.eye(D.shape[0]), L, np.zeros((0, D.shape[0])), logdet, shift, block_norm(D)
    )


def block_norm(D: np.ndarray) -> float:
    """The largest diagonal entry of an SPD block (within a factor of its size of the 2-norm)."""
    return float(np.max(np.abs(np.diag(D)))) if D.size else 0.0


def coupled_block(
    C: np.ndarray, left: np.ndarray | None = None, right: np.ndarray | None = None
) -> np.ndarray:
    """A parent's block ``[[D_a, C], [C^T, D_b]]`` in its children's kept coordinates.

    The children's blocks default to identities (Cholesky-scaled children).
    """
    ra, rb = C.shape
    D = np.eye(ra + rb)
    if left is not None:
        D[:ra, :ra] = left
        D[ra:, ra:] = right
    D[:ra, ra:] = C
    D[ra:, :ra] = C.T
    return D
