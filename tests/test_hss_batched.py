"""The batched HSS kernels against their one-node LAPACK counterparts (numpy, scipy)."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from distgn.nodal import NeuronSpan, NodalSystem
from distgn.solvers.hss.ulv import (
    householder,
    lower_solve_batch,
    orthogonal_eliminate,
    reflect,
    spd_sqrt,
    spd_sqrt_batch,
    upper_solve_batch,
)


def spd_stack(rng: np.random.Generator, B: int, s: int) -> np.ndarray:
    X = rng.standard_normal((B, s, s))
    return X @ np.swapaxes(X, 1, 2) + s * np.eye(s)


def test_householder_matches_lapack_qr_and_is_orthogonal() -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 12, 4))
    A[1, :, 2] = A[1, :, 0]  # a rank-deficient column
    A[2, 1:, 0] = 0.0  # a column already reduced (tau = 0)
    V, T, R = householder(A)
    for k, (a, v, t, r) in enumerate(zip(A, V, T, R, strict=True)):
        Q = np.eye(12) - v @ t @ v.T
        np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-14)
        np.testing.assert_allclose(Q[:, :4] @ r, a, atol=1e-13)
        if k != 1:  # with full column rank R is unique up to signs
            np.testing.assert_allclose(np.abs(r), np.abs(np.linalg.qr(a, mode="r")), atol=1e-13)
    x = rng.standard_normal((5, 12, 3))
    np.testing.assert_allclose(reflect(V, T, reflect(V, T, x, transpose=True)), x, atol=1e-14)


def test_batched_cholesky_and_triangular_solves_match_lapack() -> None:
    rng = np.random.default_rng(1)
    D = spd_stack(rng, 6, 9)
    L, logdet, shift = spd_sqrt_batch(D, 1.0)
    b = rng.standard_normal((6, 9, 2))
    lower, upper = lower_solve_batch(L, b), upper_solve_batch(L, b)
    for k in range(6):
        Lk, logdet_k, shift_k = spd_sqrt(D[k], 1.0)
        np.testing.assert_allclose(L[k], Lk, rtol=1e-13)
        assert abs(logdet[k] - logdet_k) < 1e-12 and shift[k] == shift_k == 0.0
        np.testing.assert_allclose(lower[k], sla.solve_triangular(Lk, b[k], lower=True))
        np.testing.assert_allclose(upper[k], sla.solve_triangular(Lk.T, b[k], lower=False))
    # An indefinite block in the batch: every block gets spd_sqrt's own result.
    D[3] -= 2 * np.max(np.linalg.eigvalsh(D[3])) * np.eye(9)
    L, _, shift = spd_sqrt_batch(D, 1.0)
    assert shift[3] > 0 and np.all(np.delete(shift, 3) == 0)
    np.testing.assert_allclose(L[3], spd_sqrt(D[3], 1.0)[0])
    assert spd_sqrt_batch(D, 1.0, strict=True)[2] is None


def test_orthogonal_eliminate_is_a_congruence() -> None:
    """``G^T D G = [[L11 L11^T, L11 W^T], [W L11^T, schur + W W^T]]``, G^T basis = [0; R]."""
    rng = np.random.default_rng(2)
    D = spd_stack(rng, 4, 10)
    basis = rng.standard_normal((4, 10, 3))
    factor, reduced, schur = orthogonal_eliminate(D, basis, 1.0)
    for k in range(4):
        Q = np.eye(10) - factor.V[k] @ factor.T[k] @ factor.V[k].T
        G = np.hstack([Q[:, 3:], Q[:, :3]])
        rotated = G.T @ D[k] @ G
        L11, W = factor.L11[k], factor.W[k]
        np.testing.assert_allclose(L11 @ L11.T, rotated[:7, :7], atol=1e-11)
        np.testing.assert_allclose(W @ L11.T, rotated[7:, :7], atol=1e-11)
        np.testing.assert_allclose(schur[k] + W @ W.T, rotated[7:, 7:], atol=1e-11)
        np.testing.assert_allclose((G.T @ basis[k])[:7], 0.0, atol=1e-12)
        np.testing.assert_allclose((G.T @ basis[k])[7:], reduced[k], atol=1e-12)
    # forward then backward with z = the kept part's exact solution solves D x = b
    b = rng.standard_normal((4, 10, 2))
    kept, stash = factor.forward(b)
    z = np.linalg.solve(schur, kept)
    x = factor.backward(stash, z)
    np.testing.assert_allclose(D @ x, b, atol=1e-10)


def test_stacked_nodal_entries_equal_the_blocks() -> None:
    rng = np.random.default_rng(3)
    w = rng.choice([-1.0, 1.0], 200)
    t = rng.random(200)
    system = NodalSystem(NeuronSpan("A", 0.0, 1.0, w, -w * t, bias=True))
    I = rng.integers(0, system.size, (5, 7))
    J = rng.integers(0, system.size, (5, 4))
    stacked = system.entries(I, J)
    for k in range(5):
        np.testing.assert_array_equal(stacked[k], system.entries(I[k], J[k]))
    full = system.entries(np.arange(system.size), np.arange(system.size))
    np.testing.assert_allclose(full, full.T)
    np.testing.assert_allclose(full[np.ix_(I[0], J[0])], stacked[0])
