"""Tensor Gauss quadrature on boxes: exact cases in 3D, convergence against the exact 2D routine."""

from __future__ import annotations

import numpy as np
import pytest

from distgn.assembly import polygon, quadrature
from distgn.domain import box
from distgn.errors import InputError
from distgn.targets import make_target

BOX3 = np.array([[0.0, 1.0], [-0.5, 1.0], [0.2, 0.7]])


def box_moment(bounds: np.ndarray, powers: np.ndarray) -> float:
    """``int prod x_k^p_k`` over a box."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    return float(np.prod((hi ** (powers + 1) - lo ** (powers + 1)) / (powers + 1)))


def box_gram(bounds: np.ndarray) -> np.ndarray:
    """``int xhat xhat^T`` over a box, xhat = (x_1, ..., x_d, 1)."""
    d = bounds.shape[0]
    M = np.empty((d + 1, d + 1))
    for p in range(d + 1):
        for q in range(d + 1):
            powers = np.zeros(d, dtype=int)
            for k in (p, q):
                if k < d:
                    powers[k] += 1
            M[p, q] = box_moment(bounds, powers)
    return M


def test_hyperplanes_missing_the_box_are_exact():
    """Neurons active everywhere or nowhere: polynomial integrands, integrated exactly."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 3))
    corners = np.stack(np.meshgrid(*BOX3, indexing="ij"), axis=-1).reshape(-1, 3)
    z = corners @ W.T
    b = np.where(np.arange(6) < 4, 0.5 - z.min(axis=0), -0.5 - z.max(axis=0))  # 4 on, 2 off
    I = np.arange(6)
    got = quadrature.pair_integrals(BOX3, W, b, I, I, cells_per_dim=3, order=2)
    M = box_gram(BOX3)
    r = np.column_stack([W, b])
    on = np.arange(4)
    np.testing.assert_allclose(got["A"][np.ix_(on, on)], r[on] @ M @ r[on].T, rtol=1e-13)
    np.testing.assert_allclose(got["H"][np.ix_(on, on)], M[3, 3], rtol=1e-13)
    np.testing.assert_allclose(
        got["G"][np.ix_(on, on)], np.broadcast_to(M, (4, 4, 4, 4)), rtol=1e-13, atol=1e-15
    )
    for key in ("A", "H", "G"):
        assert np.all(got[key][4:] == 0) and np.all(got[key][:, 4:] == 0)


def test_subsets_which_chunks_and_symmetry(monkeypatch):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(7, 3))
    b = -np.sum(W * rng.uniform(BOX3[:, 0], BOX3[:, 1], (7, 3)), axis=1)
    I, J = np.arange(7), np.arange(7)
    full = quadrature.pair_integrals(BOX3, W, b, I, J, cells_per_dim=6, order=3)
    for key in ("A", "H"):
        np.testing.assert_allclose(full[key], full[key].T, rtol=1e-13)
    np.testing.assert_allclose(full["G"], full["G"].transpose(1, 0, 3, 2), rtol=1e-13, atol=1e-16)
    np.testing.assert_array_equal(full["G"][..., 3, 3], full["H"])
    monkeypatch.setattr(quadrature, "CHUNK_VALUES", 100)
    part = quadrature.pair_integrals(
        BOX3, W, b, np.array([4, 1]), np.array([0, 6, 2]), which=("H",), cells_per_dim=6, order=3
    )
    assert set(part) == {"H"}
    np.testing.assert_allclose(part["H"], full["H"][np.ix_([4, 1], [0, 6, 2])], rtol=1e-13)
    with pytest.raises(InputError, match="which"):
        quadrature.pair_integrals(BOX3, W, b, I, J, which=("X",))
    with pytest.raises(InputError, match="cells_per_dim"):
        quadrature.pair_integrals(BOX3, W, b, I, J, cells_per_dim=0)


def test_convergence_against_exact_2d():
    """O(h^2) for A (kinks) and O(h) for H and G (jumps) against the exact polygon routine."""
    rng = np.random.default_rng(2)
    n = 24
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    W = np.column_stack([np.cos(theta), np.sin(theta)]) * rng.uniform(0.5, 2.0, (n, 1))
    b = -np.sum(W * rng.uniform(0.0, 1.0, (n, 2)), axis=1)
    square = box([[0.0, 1.0], [0.0, 1.0]])
    I = np.arange(n)
    exact = polygon.pair_integrals(square.vertices, W, b, I, I)
    cells = np.array([8, 16, 32, 64])
    errors = {key: [] for key in ("A", "H", "G")}
    for c in cells:
        got = quadrature.pair_integrals(square.bounds, W, b, I, I, cells_per_dim=int(c), order=4)
        for key in errors:
            errors[key].append(np.max(np.abs(got[key] - exact[key])) / np.max(np.abs(exact[key])))
    rates = {key: -np.polyfit(np.log(cells), np.log(e), 1)[0] for key, e in errors.items()}
    print("relative errors", errors, "rates", rates)
    assert rates["A"] > 1.8 and rates["H"] > 0.8 and rates["G"] > 0.8
    assert errors["A"][-1] < 1e-5 and errors["H"][-1] < 1e-3


def test_target_moments_and_integrals_smooth_3d():
    """The built-in 3D smooth target, neurons active everywhere: a smooth integrand."""
    domain = box(BOX3)
    target = make_target("smooth", domain)
    lo, hi = BOX3[:, 0], BOX3[:, 1]
    L = hi - lo
    # int_lo^hi sin(pi (x - lo) / L) dx = 2 L / pi; int x sin(...) dx = (lo + L / 2) 2 L / pi.
    s0 = 2.0 * L / np.pi
    s1 = (lo + L / 2.0) * s0
    ref = np.array(
        [s1[0] * s0[1] * s0[2], s0[0] * s1[1] * s0[2], s0[0] * s0[1] * s1[2], np.prod(s0)]
    )
    W = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    b = np.array([1.0, 2.0, -10.0])  # active, active, inactive
    got = quadrature.target_moments(BOX3, W, b, np.arange(3), target, cells_per_dim=8, order=6)
    np.testing.assert_allclose(got[:2], np.broadcast_to(ref, (2, 4)), rtol=1e-12)
    assert np.all(got[2] == 0)
    total, total_sq = quadrature.target_integrals(BOX3, target, cells_per_dim=8, order=6)
    assert total == pytest.approx(np.prod(s0), rel=1e-12)
    assert total_sq == pytest.approx(np.prod(L) / 8.0, rel=1e-12)


def test_target_moments_2d_converge_to_polygon():
    square = box([[0.0, 1.0], [0.0, 1.0]])
    target = make_target("smooth", square)
    rng = np.random.default_rng(3)
    theta = rng.uniform(0.0, 2.0 * np.pi, 10)
    W = np.column_stack([np.cos(theta), np.sin(theta)])
    b = -np.sum(W * rng.uniform(0.0, 1.0, (10, 2)), axis=1)
    exact = polygon.target_moments(square.vertices, W, b, np.arange(10), target)
    errors = [
        np.max(
            np.abs(
                quadrature.target_moments(
                    square.bounds, W, b, np.arange(10), target, cells_per_dim=c
                )
                - exact
            )
        )
        for c in (16, 64)
    ]
    assert errors[1] < errors[0] / 3 and errors[1] < 1e-3
