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

``OrthogonalFactor`` holds a batch of nodes of equal shapes (leading axis), eliminated together
by ``orthogonal_eliminate``: the work of a tree level is a few stacked calls (numpy's batched
Cholesky and matrix products; Householder reflectors in compact WY form) and triangular solves
looped over rows, not over nodes, so the Python overhead per level does not grow with the number
of nodes. Rank-local: no MPI.
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
    """Factors of a batch of B nodes with an orthogonal transform (leading axis: the node).

    The transform is ``G = [Q[:, r:], Q[:, :r]]`` with ``Q = I - V T V^T`` the Householder
    reflectors of the QR of the node's basis (s x r) in compact WY form: its first ``s - r``
    columns are the decoupled directions. Only V and T are stored (O(s r), not s^2) and applied
    in O(s r) per vector (``reflect``).

    Attributes
    ----------
    V : ndarray, shape (B, s, r)
        Householder vectors (column j zero above row j, one at row j).
    T : ndarray, shape (B, r, r)
        Upper-triangular factor of the compact WY form.
    L11 : ndarray, shape (B, s - r, s - r)
        Cholesky factor of the decoupled block.
    W : ndarray, shape (B, r, s - r)
        ``D21 L11^{-T}``.
    logdet : ndarray, shape (B,)
        ``log det (L11 L11^T)``.
    shift : ndarray, shape (B,)
        Largest diagonal shift added to make a node's blocks SPD (0 when none).
    norm : ndarray, shape (B,)
        The node's block norm (largest diagonal entry), the reference for ``shift``.
    """

    V: np.ndarray
    T: np.ndarray
    L11: np.ndarray
    W: np.ndarray
    logdet: np.ndarray
    shift: np.ndarray
    norm: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held by the factors."""
        return int(self.V.nbytes + self.T.nbytes + self.L11.nbytes + self.W.nbytes)

    def forward(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Upward solve step for stacked right-hand sides b (B, s, c): (kept right-hand sides for
        the parents (B, r, c), what the nodes keep (B, s - r, c))."""
        c = reflect(self.V, self.T, b, transpose=True)  # Q^T b = [kept; decoupled]
        r = self.V.shape[2]
        y = lower_solve_batch(self.L11, c[:, r:])
        return c[:, :r] - self.W @ y, y

    def backward(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Downward solve step: the nodes' solutions (B, s, c) from their stash y and the kept
        solutions z (B, r, c)."""
        u = upper_solve_batch(self.L11, y - np.swapaxes(self.W, 1, 2) @ z)
        return reflect(self.V, self.T, np.concatenate([z, u], axis=1))


def householder(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Householder QR of stacked A (B, s, r), s >= r: ``A = Q [R; 0]`` with
    ``Q = H_0 ... H_{r-1} = I - V T V^T`` (compact WY form, T upper triangular).

    The reflectors are those of LAPACK's dgeqrf (``tau = 0`` when a column is already reduced),
    computed for the whole batch at once, one column at a time.

    Returns
    -------
    V : ndarray, shape (B, s, r)
    T : ndarray, shape (B, r, r)
    R : ndarray, shape (B, r, r)
    """
    A = np.array(A, dtype=float)
    B, s, r = A.shape
    V = np.zeros((B, s, r))
    T = np.zeros((B, r, r))
    for j in range(r):
        alpha = A[:, j, j].copy()
        sigma = np.linalg.norm(A[:, j + 1 :, j], axis=1)
        reflect_here = sigma > 0
        beta = -np.copysign(np.hypot(alpha, sigma), alpha)
        denominator = np.where(reflect_here, alpha - beta, 1.0)
        tau = np.where(reflect_here, (beta - alpha) / np.where(reflect_here, beta, 1.0), 0.0)
        V[:, j, j] = 1.0
        V[:, j + 1 :, j] = np.where(
            reflect_here[:, None], A[:, j + 1 :, j] / denominator[:, None], 0.0
        )
        v = V[:, j:, j]
        if j + 1 < r:
            tail = A[:, j:, j + 1 :]
            tail -= (tau[:, None] * v)[:, :, None] * np.einsum("bs,bsc->bc", v, tail)[:, None, :]
        A[:, j, j] = np.where(reflect_here, beta, alpha)
        A[:, j + 1 :, j] = 0.0
        # T[:j, j] = -tau_j T[:j, :j] V[:, :j]^T v_j (Schreiber and Van Loan).
        T[:, :j, j] = -tau[:, None] * np.einsum(
            "bij,bj->bi", T[:, :j, :j], np.einsum("bsj,bs->bj", V[:, :, :j], V[:, :, j])
        )
        T[:, j, j] = tau
    return V, T, np.triu(A[:, :r, :r])


def reflect(V: np.ndarray, T: np.ndarray, x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``Q x`` (or ``Q^T x``) for stacked x (B, s, c), ``Q = I - V T V^T`` (``householder``)."""
    if not V.shape[2]:
        return np.array(x, dtype=float)
    inner = np.swapaxes(V, 1, 2) @ x
    return x - V @ ((np.swapaxes(T, 1, 2) if transpose else T) @ inner)


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
        """Upward solve step for b (1, s, c) (a batch of this one node, like ``OrthogonalFactor``):
        (kept right-hand side for the parent, decoupled part kept here)."""
        w = lower_solve(self.L, b[0])
        kept = self.Q.T @ w
        return kept[None], (w - self.Q @ kept)[None]

    def backward(self, decoupled: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Downward solve step: the node's solution (1, s, c) from its decoupled part and z."""
        return upper_solve(self.L, decoupled[0] + self.Q @ z[0])[None]


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


def spd_sqrt_batch(
    D: np.ndarray, scale: float, floor: float = FLOOR, strict: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``spd_sqrt`` of a stack of blocks D (B, s, s): one batched Cholesky when every block
    passes (the common case, the same result as ``spd_sqrt``), else ``spd_sqrt`` node by node,
    or, with ``strict``, ``shift = None`` (the caller takes its careful path).

    Returns
    -------
    L : ndarray, shape (B, s, s)
    logdet : ndarray, shape (B,)
    shift : ndarray, shape (B,), or None
    """
    D = 0.5 * (D + np.swapaxes(D, 1, 2))
    if not D.shape[1]:
        return D, np.zeros(D.shape[0]), np.zeros(D.shape[0])
    try:
        L = np.linalg.cholesky(D)
        pivots = np.diagonal(L, axis1=1, axis2=2) ** 2
        if pivots.min() >= floor * scale:
            return L, np.sum(np.log(pivots), axis=1), np.zeros(D.shape[0])
    except np.linalg.LinAlgError:
        pass
    if strict:
        return D, np.zeros(D.shape[0]), None
    parts = [spd_sqrt(block, scale, floor) for block in D]
    return (
        np.stack([p[0] for p in parts]).reshape(D.shape),
        np.array([p[1] for p in parts]),
        np.array([p[2] for p in parts]),
    )


def lower_solve_batch(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L^{-1} b`` for stacked lower-triangular L (B, m, m) and b (B, m, c): forward
    substitution, vectorised over the batch (the same operations as a triangular solve)."""
    x = np.empty(b.shape)
    for i in range(L.shape[1]):
        x[:, i] = (b[:, i] - np.einsum("bj,bjc->bc", L[:, i, :i], x[:, :i])) / L[:, i, i, None]
    return x


def upper_solve_batch(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L^{-T} b`` for stacked lower-triangular L (B, m, m) and b (B, m, c): back
    substitution, vectorised over the batch."""
    x = np.empty(b.shape)
    m = L.shape[1]
    for i in range(m - 1, -1, -1):
        x[:, i] = (b[:, i] - np.einsum("bj,bjc->bc", L[:, i + 1 :, i], x[:, i + 1 :])) / L[
            :, i, i, None
        ]
    return x


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
    """Eliminate the directions orthogonal to ``basis`` (B, s, r) from nodes with blocks D
    (B, s, s), all at once.

    ``scale`` (the norm of the whole matrix) and ``floor`` set the pivot floor of ``spd_sqrt``.

    Returns
    -------
    factor : OrthogonalFactor
    reduced_basis : ndarray, shape (B, r, r)
        The basis in the kept coordinates (``G^T basis = [0; reduced_basis]``).
    schur : ndarray, shape (B, r, r)
        The kept coordinates' diagonal blocks (Schur complements).
    """
    r = basis.shape[2]
    V, T, R = householder(basis)
    # Q^T D Q = [[kept, coupling], [coupling^T, decoupled]] (reflectors from both sides).
    rotated = reflect(V, T, np.swapaxes(reflect(V, T, D, transpose=True), 1, 2), True)
    L11, logdet, shift11 = spd_sqrt_batch(rotated[:, r:, r:], scale, floor, strict=True)
    if shift11 is not None:
        W = np.swapaxes(lower_solve_batch(L11, rotated[:, r:, :r]), 1, 2)
        schur = rotated[:, :r, :r] - W @ np.swapaxes(W, 1, 2)
        _, _, shift = spd_sqrt_batch(schur, scale, floor, strict=True)
    if shift11 is None or shift is None:
        # Not numerically SPD with the floor's margin: make the whole block SPD first (a shift
        # when the approximation is indefinite); then the Schur complement stays PSD and
        # ||W||^2 <= ||D22||, so nothing grows from level to level.
        L, _, shift = spd_sqrt_batch(D, scale, floor)
        if shift.any():
            D = np.where(shift[:, None, None] > 0, L @ np.swapaxes(L, 1, 2), D)
            rotated = reflect(V, T, np.swapaxes(reflect(V, T, D, transpose=True), 1, 2), True)
        L11, logdet, shift11 = spd_sqrt_batch(rotated[:, r:, r:], scale, floor)
        W = np.swapaxes(lower_solve_batch(L11, rotated[:, r:, :r]), 1, 2)
        schur = rotated[:, :r, :r] - W @ np.swapaxes(W, 1, 2)
        shift = np.maximum(shift, shift11)
    norm = np.max(np.abs(np.diagonal(D, axis1=1, axis2=2)), axis=1, initial=0.0)
    factor = OrthogonalFactor(V, T, L11, W, logdet, shift, norm)
    return factor, R, 0.5 * (schur + np.swapaxes(schur, 1, 2))


def root_factor(
    D: np.ndarray, scale: float | None = None, floor: float = FLOOR
) -> OrthogonalFactor:
    """The root (a batch of one): everything is eliminated (no kept coordinates)."""
    L, logdet, shift = spd_sqrt(D, scale, floor)
    s = D.shape[0]
    return OrthogonalFactor(
        np.zeros((1, s, 0)),
        np.zeros((1, 0, 0)),
        L[None],
        np.zeros((1, 0, s)),
        np.array([logdet]),
        np.array([shift]),
        np.array([block_norm(D)]),
    )


def block_norm(D: np.ndarray) -> float:
    """The largest diagonal entry of an SPD block (within a factor of its size of the 2-norm)."""
    return float(np.max(np.abs(np.diag(D)))) if D.size else 0.0


def coupled_block_batch(C: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Stacked parents' blocks ``[[D_a, C], [C^T, D_b]]`` for C (B, ra, rb)."""
    ra = C.shape[1]
    D = np.empty((C.shape[0], ra + C.shape[2], ra + C.shape[2]))
    D[:, :ra, :ra] = left
    D[:, ra:, ra:] = right
    D[:, :ra, ra:] = C
    D[:, ra:, :ra] = np.swapaxes(C, 1, 2)
    return D


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
