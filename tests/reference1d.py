"""Independent 1D references for the fit tests, in long double (no product code is used).

``best_fit_error``: the L2 error of the best approximation of u from the span of the neurons (and
the constant, with an output bias): the L2 projection onto the P1 functions on the mesh of the
kinks, constrained to the span by Lagrange multipliers. A P1 function on ``L = z_0 < ... < z_K = R``
is ``alpha + beta x + sum_k a_k (x - z_k)_+`` (a_k the slope jumps); it lies in the span iff its
affine part, less the affine parts that left-facing neurons bring (``|w| (t - x)_+ = |w| (x - t)_+
+ w x + b``), is a combination of the affine functions of the neurons without a kink inside and of
the constant (bias). Tridiagonal solves by the Thomas algorithm, quadrature by 12-point
Gauss-Legendre on the cells split at the target's features.

``true_error``: the L2 error of a network with output weights c, evaluated by prefix sums over the
sorted kinks in long double at the same Gauss points.
"""

from __future__ import annotations

import numpy as np

LD = np.longdouble
POINTS = 12


def _cells(
    z: np.ndarray, points: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gauss points (x, weight) on the cells of z split at ``points``, with their cell index and
    local coordinate (x - z_k) / h_k, all in long double."""
    extra = np.array([p for p in points if z[0] < p < z[-1]], dtype=float)
    fine = np.unique(np.concatenate([z, extra]))
    gx, gw = np.polynomial.legendre.leggauss(POINTS)
    left, right = fine[:-1].astype(LD), fine[1:].astype(LD)
    half, mid = (right - left) / 2, (right + left) / 2
    cell = np.searchsorted(z, fine[:-1], side="right") - 1
    zl = z[cell].astype(LD)
    h = z[cell + 1].astype(LD) - zl
    offset = (mid - zl)[:, None] + half[:, None] * gx.astype(LD)[None, :]
    x = mid[:, None] + half[:, None] * gx.astype(LD)[None, :]
    return x, half[:, None] * gw.astype(LD)[None, :], cell, offset / h[:, None]


def _thomas(diag: np.ndarray, off: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve the symmetric tridiagonal system (diag, off) x = rhs (long double, columns)."""
    n = diag.size
    c = np.zeros(n, dtype=LD)
    d = np.zeros(rhs.shape, dtype=LD)
    c[0] = off[0] / diag[0] if n > 1 else 0
    d[0] = rhs[0] / diag[0]
    for i in range(1, n):
        m = diag[i] - off[i - 1] * c[i - 1]
        if i < n - 1:
            c[i] = off[i] / m
        d[i] = (rhs[i] - off[i - 1] * d[i - 1]) / m
    x = np.zeros(rhs.shape, dtype=LD)
    x[-1] = d[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


def best_fit_error(
    w: np.ndarray,
    b: np.ndarray,
    bias: bool,
    L: float,
    R: float,
    func,
    points: tuple[float, ...] = (),
) -> float:
    """L2 error of the best fit of ``func`` from the span (module docstring)."""
    t = -b / w
    inside = (t > L) & (t < R)
    z = np.unique(np.concatenate([[L, R], t[inside]]))
    K = z.size - 1
    h = np.diff(z).astype(LD)
    diag = np.zeros(K + 1, dtype=LD)
    diag[:-1] += h / 3
    diag[1:] += h / 3
    off = h / 6
    x, weight, cell, lam = _cells(z, points)
    u = func(x.astype(float)).astype(LD)
    f = np.zeros(K + 1, dtype=LD)
    np.add.at(f, cell, np.sum(u * (1 - lam) * weight, axis=1))
    np.add.at(f, cell + 1, np.sum(u * lam * weight, axis=1))
    # ell(y) = (alpha, beta) - sum_{left-facing inside} (a_k / |w_i|) (b_i, w_i), linear in y;
    # a_k = (y_{k+1} - y_k) / h_k - (y_k - y_{k-1}) / h_{k-1} at the interior node z_k.
    ell = np.zeros((2, K + 1), dtype=LD)
    ell[1, 0], ell[1, 1] = -1 / h[0], 1 / h[0]
    ell[0] = -L * ell[1]
    ell[0, 0] += 1
    k = np.searchsorted(z, t)  # z[k] == t for kinks inside
    for i in np.flatnonzero(inside & (w < 0)):
        j = k[i]
        weights = np.array([1 / h[j - 1], -1 / h[j] - 1 / h[j - 1], 1 / h[j]], dtype=LD)
        coef = np.array([b[i], w[i]], dtype=LD) / LD(abs(w[i]))
        ell[:, j - 1 : j + 2] -= coef[:, None] * weights[None, :]
    free = [np.array([b[i], w[i]]) for i in np.flatnonzero(~inside)]
    if bias:
        free.append(np.array([1.0, 0.0]))
    basis = np.zeros((2, 0)) if not free else np.column_stack(free)
    q, _ = np.linalg.qr(np.column_stack([basis, np.eye(2)]))
    rank = np.linalg.matrix_rank(basis) if free else 0
    complement = q[:, rank:].astype(LD)
    constraints = (complement.T @ ell).T  # (K+1) x m, constraints^T y = 0
    solve = _thomas(diag, off, np.column_stack([f, constraints]))
    y = solve[:, 0]
    if constraints.shape[1]:
        gram = constraints.T @ solve[:, 1:]
        lagrange = np.linalg.solve(gram.astype(float), (constraints.T @ y).astype(float))
        y = y - solve[:, 1:] @ lagrange.astype(LD)
    v = y[cell][:, None] * (1 - lam) + y[cell + 1][:, None] * lam
    return float(np.sqrt(np.sum((v - u) ** 2 * weight)))


def true_error(
    w: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    c0: float | None,
    L: float,
    R: float,
    func,
    points: tuple[float, ...] = (),
) -> float:
    """L2 error of the network ``c0 + sum c_i relu(w_i x + b_i)`` against ``func`` on [L, R]."""
    t = -b / w
    z = np.unique(np.concatenate([[L, R], t[(t > L) & (t < R)]]))
    x, weight, _, _ = _cells(z, points)
    xs = x.ravel()
    v = np.full(xs.size, LD(c0 or 0.0))
    cw, cb = c.astype(LD) * w.astype(LD), c.astype(LD) * b.astype(LD)
    for sign in (1.0, -1.0):
        sel = np.flatnonzero(np.sign(w) == sign)
        order = sel[np.argsort(t[sel])]
        prefix_w = np.concatenate([[LD(0)], np.cumsum(cw[order])])
        prefix_b = np.concatenate([[LD(0)], np.cumsum(cb[order])])
        k = np.searchsorted(t[order].astype(LD), xs)  # kinks below x
        if sign > 0:
            v += prefix_w[k] * xs + prefix_b[k]
        else:
            v += (prefix_w[-1] - prefix_w[k]) * xs + (prefix_b[-1] - prefix_b[k])
    u = func(x.astype(float)).astype(LD).ravel()
    return float(np.sqrt(np.sum((v - u) ** 2 * weight.ravel())))
