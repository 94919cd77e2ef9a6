"""1D closed forms against exact rational arithmetic, target moments against mpmath quadrature."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from distgn.assembly import exact1d
from distgn.domain import interval
from distgn.fit import l2_error_1d
from distgn.targets import Target, make_target


def exact_pair(L: Fraction, R: Fraction, wi: Fraction, bi: Fraction, wj: Fraction, bj: Fraction):
    """A, H, G of one pair by exact integration of polynomials over the common support."""

    def support(w, b):
        t = -b / w
        return (max(t, L), R) if w > 0 else (L, min(t, R))

    (a1, z1), (a2, z2) = support(wi, bi), support(wj, bj)
    lo, hi = max(a1, a2), min(z1, z2)
    if hi <= lo:
        return Fraction(0), Fraction(0), [[Fraction(0)] * 2 for _ in range(2)]

    def integral(p):  # p: coefficients of a polynomial in x, lowest first
        return sum(c * (hi ** (k + 1) - lo ** (k + 1)) / (k + 1) for k, c in enumerate(p))

    # (wi x + bi)(wj x + bj) = wi wj x^2 + (wi bj + wj bi) x + bi bj
    A = integral([bi * bj, wi * bj + wj * bi, wi * wj])
    G = [[integral([0, 0, 1]), integral([0, 1])], [integral([0, 1]), integral([1])]]
    return A, hi - lo, G


@pytest.mark.parametrize("L, R", [(Fraction(0), Fraction(1)), (Fraction(-3, 2), Fraction(5, 4))])
def test_pairs_match_exact_rationals(L, R):
    rng = np.random.default_rng(7)
    n = 9
    signs, sizes = rng.choice([-1, 1], n), rng.integers(1, 9, n)
    w = [Fraction(int(s) * int(m), 4) for s, m in zip(signs, sizes, strict=True)]
    t = [L + (R - L) * Fraction(int(k), 16) for k in rng.integers(-3, 20, n)]  # some outside
    b = [-wi * ti for wi, ti in zip(w, t, strict=True)]
    W = np.array([[float(x)] for x in w])
    bb = np.array([float(x) for x in b])
    bounds = np.array([[float(L), float(R)]])
    idx = np.arange(n)
    got = exact1d.pair_integrals(bounds, W, bb, idx, idx)
    for i in range(n):
        for j in range(n):
            A, H, G = exact_pair(L, R, w[i], b[i], w[j], b[j])
            for value, ref in [(got["A"][i, j], A), (got["H"][i, j], H)] + [
                (got["G"][i, j, p, q], G[p][q]) for p in range(2) for q in range(2)
            ]:
                if ref == 0:
                    assert value == 0.0
                else:
                    assert abs(value - float(ref)) <= 1e-14 * abs(float(ref))


def test_example_closed_form():
    """docs/math.md's example ("1D closed forms"): w = +1 on [0, 1], t_i <= t_j."""
    ti, tj = 0.2, 0.55
    got = exact1d.pair_integrals(
        np.array([[0.0, 1.0]]), np.ones((2, 1)), -np.array([ti, tj]), np.array([0]), np.array([1])
    )
    ref = (1 - tj) ** 3 / 3 + (tj - ti) * (1 - tj) ** 2 / 2
    assert got["A"][0, 0] == pytest.approx(ref, rel=1e-15)
    assert got["H"][0, 0] == pytest.approx(1 - tj, rel=1e-15)


@pytest.mark.parametrize("name", ["step", "tanh_layer", "power", "sine"])
def test_target_moments_match_mpmath(name):
    dom = interval(-0.5, 1.5)
    target = make_target(name, dom)
    W = np.array([[1.0], [-2.0], [0.5], [-1.0]])
    t = np.array([0.1, 0.73, -0.9, 0.5])  # the third is active everywhere
    b = -W[:, 0] * t
    got = exact1d.target_moments(dom.bounds, W, b, np.arange(4), target)
    mpmath.mp.dps = 30
    u = {
        "step": lambda x: mpmath.mpf(1) if x >= 0.5 else mpmath.mpf(0),
        "tanh_layer": lambda x: mpmath.tanh((x - mpmath.mpf("0.5")) * 100),
        "power": lambda x: abs(x - mpmath.mpf("0.5")) ** (mpmath.mpf(2) / 3),
        "sine": lambda x: mpmath.sin(2 * mpmath.pi * (x + mpmath.mpf("0.5")) / 2),
    }[name]
    for i in range(4):
        ti = mpmath.mpf(t[i])
        lo, hi = (
            (max(ti, mpmath.mpf(-0.5)), mpmath.mpf(1.5))
            if W[i, 0] > 0
            else (mpmath.mpf(-0.5), min(ti, mpmath.mpf(1.5)))
        )
        pts = sorted(
            {lo, hi, mpmath.mpf("0.5")}
            | ({mpmath.mpf(0.5) + k * mpmath.mpf("0.01") for k in range(-20, 21)})
        )
        pts = [p for p in pts if lo <= p <= hi]
        for k, power in enumerate([1, 0]):
            ref = mpmath.quad(lambda x, p=power: u(x) * x**p, pts)
            assert abs(got[i, k] - float(ref)) <= 1e-13 * max(1.0, abs(float(ref)))


def test_target_integrals_step():
    u_int, u_sq = exact1d.target_integrals(
        np.array([[0.0, 2.0]]), make_target("step", interval(0.0, 2.0))
    )
    assert u_int == pytest.approx(1.0, abs=1e-15) and u_sq == pytest.approx(1.0, abs=1e-15)


def test_l2_error_reaches_round_off_on_a_network_target():
    W = np.array([[1.0], [-1.0], [2.0]])
    b = np.array([-0.2, 0.7, -1.2])
    c = np.array([1.5, -2.0, 0.3])
    u = Target("net", lambda x: np.maximum(x @ W.T + b, 0) @ c + 0.1, points=(0.2, 0.6, 0.7))
    assert l2_error_1d(np.array([[0.0, 1.0]]), W, b, c, 0.1, u) < 1e-15
    zero = Target("zero", lambda x: np.zeros(x.shape[0]))
    mpmath.mp.dps = 30

    def v(x):
        return sum(ci * max(wi * x + bi, 0) for ci, wi, bi in zip(c, W[:, 0], b, strict=True)) + 0.1

    ref = mpmath.sqrt(mpmath.quad(lambda x: v(x) ** 2, [0, 0.2, 0.6, 0.7, 1]))
    assert l2_error_1d(np.array([[0.0, 1.0]]), W, b, c, 0.1, zero) == pytest.approx(
        float(ref), rel=1e-14
    )
