"""Reseating of wasted neurons in SgGN: 1D per-cell fit errors against adaptive quadrature, the
2D insertion score against the exact loss, where wasted neurons go, and that a reseat lowers the
loss; the neuron a basin hop moves, and the squares ``int phi_i^2`` it is ranked by.

Serial tests (a run with reseating on 1 .. 4 ranks is in test_training_determinism.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI
from scipy.integrate import quad

from distgn.assembly import pair_integrals, relu_squares
from distgn.config import load_config
from distgn.domain import box, interval
from distgn.fit import cell_errors_1d, l2_error_1d
from distgn.network import Network
from distgn.problem import Problem
from distgn.targets import make_target
from distgn.training import sggn
from distgn.training.deflation import dead_neurons
from distgn.training.objective import Context, evaluate_loss, loss_and_gradient
from distgn.training.reseat import (
    CANDIDATE_ANGLES,
    CANDIDATE_GRID,
    RESEAT_SHARE,
    candidate_lines,
    hop_neuron,
    insertion_scores,
    reseated,
    wasted_neurons,
)


def problem_with(t: np.ndarray, w: np.ndarray, target: str = "sine") -> Problem:
    domain = interval(0.0, 1.0)
    return Problem(domain, make_target(target, domain), Network(w[:, None], -w * t))


def context(problem: Problem) -> Context:
    return Context(problem, MPI.COMM_SELF, load_config(None, ["solver.kind=dense"]).solver)


def test_cell_errors_equal_adaptive_quadrature(rng):
    t = np.sort(rng.uniform(0.05, 0.95, 7))
    w = np.where(rng.uniform(size=7) < 0.5, -1.0, 1.0)
    problem = problem_with(t, w)
    network = Network(problem.network.W, problem.network.b, rng.standard_normal(7), 0.4)
    nodes, cumulative = cell_errors_1d(
        problem.domain.bounds, network.W, network.b, network.c, network.c0, problem.target
    )
    errors = np.diff(cumulative)
    assert np.all(errors >= 0)

    def squared(x: float) -> float:
        point = np.array([[x]])
        return float((network.evaluate(point)[0] - problem.target(point)[0]) ** 2)

    reference = [
        quad(squared, a, b, epsabs=0, epsrel=1e-13)[0]
        for a, b in zip(nodes[:-1], nodes[1:], strict=True)
    ]
    np.testing.assert_allclose(errors, reference, rtol=1e-10, atol=1e-16)
    total = l2_error_1d(
        problem.domain.bounds, network.W, network.b, network.c, network.c0, problem.target
    )
    assert total**2 == pytest.approx(sum(reference), rel=1e-10)


def test_wasted_neurons_are_dead_dependent_or_negligible():
    # Neurons: a mesh, two active on the whole interval (they span the affine functions), one
    # beyond the right end facing right (dead), an opposite pair at the same breakpoint (it only
    # adds an affine function; the generator of lowest |c| is the one dropped), and a neuron whose
    # coefficient is negligible.
    t = np.array([0.1, 0.3, 0.5, -0.5, 1.7, 1.5, 0.6, 0.6, 0.2])
    w = np.array([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    problem = problem_with(t, w)
    c = np.array([1.0, -2.0, 1.5, 1.2, -1.0, 0.0, 0.7, 0.9, 1e-9])
    network = Network(problem.network.W, problem.network.b, c)
    removed = np.zeros(t.size, dtype=bool)
    removed[5] = True
    wasted = wasted_neurons(problem, network, removed, drop_tol=1e-4)
    assert wasted[5] and wasted[8]
    assert wasted[6] and not wasted[7]  # the one of lower |c| in the pair
    assert not wasted[:5].any()


@pytest.mark.parametrize("n", [6, 40])
def test_reseated_neurons_go_to_the_worst_cells(n, rng):
    # A step target fitted by a mesh away from the jump: the worst cells are near the jump. At
    # most n / RESEAT_SHARE neurons move, those of smallest |c| first.
    t = np.concatenate([rng.uniform(0.05, 0.3, n // 2), rng.uniform(0.7, 0.95, n - n // 2)])
    w = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    problem = problem_with(t, w, "step")
    c = rng.uniform(0.5, 1.0, n)
    c[:4] = [0.2, 0.0, 0.1, 0.3]
    network = Network(problem.network.W, problem.network.b, c)
    wasted = np.zeros(n, dtype=bool)
    wasted[:4] = True
    count = max(1, n // RESEAT_SHARE)
    moved_network, moved = reseated(problem, network, wasted)
    nodes, cumulative = cell_errors_1d(
        problem.domain.bounds, network.W, network.b, network.c, None, problem.target
    )
    worst = np.argsort(-np.diff(cumulative))[:count]
    expected = np.sort(0.5 * (nodes[worst] + nodes[worst + 1]))
    assert np.flatnonzero(moved).tolist() == sorted([1, 2, 0, 3][:count])
    np.testing.assert_allclose(np.sort(moved_network.breakpoints()[moved]), expected, rtol=1e-15)
    np.testing.assert_array_equal(moved_network.W[:, 0], w)  # orientations kept
    np.testing.assert_array_equal(moved_network.c[moved], 0.0)
    untouched = ~moved
    np.testing.assert_array_equal(moved_network.b[untouched], network.b[untouched])


def test_reseat_revives_a_dead_neuron_and_lowers_the_loss():
    t = np.array([0.2, 0.4, 0.6, 0.8, 1.7])
    problem = problem_with(t, np.ones(t.size), "tanh_layer")
    ctx = context(problem)
    state, _ = sggn.start(ctx, problem.network)
    assert state.removed.tolist() == [False] * 4 + [True]
    new, gradient, count = sggn.reseat(ctx, state, drop_tol=1e-4)
    assert count == 1 and not new.removed.any()
    assert 0.0 < new.network.breakpoints()[4] < 1.0
    assert new.loss < state.loss
    # The state's loss is the loss of its network, and the gradient comes with it.
    assert new.loss == pytest.approx(evaluate_loss(ctx, new.network)[0], rel=1e-12)
    assert gradient is not None and gradient.loss == pytest.approx(new.loss, rel=1e-12)


def test_reseat_keeps_a_state_with_nothing_wasted():
    t = np.array([0.2, 0.4, 0.6, 0.8])
    problem = problem_with(t, np.ones(t.size), "sine")
    ctx = context(problem)
    state, _ = sggn.start(ctx, problem.network)
    new, gradient, count = sggn.reseat(ctx, state, drop_tol=1e-4)
    assert (new, gradient, count) == (state, None, 0)


def test_insertion_score_is_the_loss_decrease_of_the_best_coefficient(rng):
    # 2D: adding candidate k with its best coefficient c* = -<v - u, phi_k> / |phi_k|^2 (the other
    # coefficients fixed) lowers J by score_k / 2; J measured by the exact loss formula.
    domain = box([[0.0, 1.0], [0.0, 1.0]])
    W = rng.standard_normal((6, 2))
    W /= np.linalg.norm(W, axis=1)[:, None]
    b = -np.einsum("ij,ij->i", W, rng.uniform(0.3, 0.7, (6, 2)))
    network = Network(W, b, rng.standard_normal(6), 0.2)
    problem = Problem(domain, make_target("smooth", domain), network, True)
    ctx = context(problem)
    loss = evaluate_loss(ctx, network)[0]
    lines_W, lines_b, point = candidate_lines(problem)
    assert lines_W.shape == (CANDIDATE_GRID**2 * 2 * CANDIDATE_ANGLES, 2)
    assert np.bincount(point).tolist() == [2 * CANDIDATE_ANGLES] * CANDIDATE_GRID**2
    assert not dead_neurons(problem, Network(lines_W, lines_b)).any()
    picked = rng.choice(lines_W.shape[0], 3, replace=False)
    scores = insertion_scores(problem, network, lines_W[picked], lines_b[picked])
    for k, score in zip(picked, scores, strict=True):
        grown = Network(
            np.vstack([W, lines_W[k]]), np.append(b, lines_b[k]), np.append(network.c, 0.0), 0.2
        )
        sub = Problem(domain, problem.target, grown, True)
        slope = loss_and_gradient(context(sub), grown).c[-1]  # <v - u, phi_k>
        best = Network(grown.W, grown.b, np.append(network.c, -score / slope), 0.2)
        assert evaluate_loss(context(sub), best)[0] == pytest.approx(loss - score / 2, rel=1e-9)


def test_reseat_revives_a_dead_neuron_in_2d():
    domain = box([[0.0, 1.0], [0.0, 1.0]])
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.8, 0.6], [1.0, 0.0]])
    b = np.array([-0.3, -0.6, -0.7, 0.1, -2.0])  # the last line misses the square
    problem = Problem(domain, make_target("line_jump", domain), Network(W, b))
    ctx = context(problem)
    state, _ = sggn.start(ctx, problem.network)
    assert state.removed.tolist() == [False] * 4 + [True]
    new, gradient, count = sggn.reseat(ctx, state, drop_tol=1e-4)
    assert count == 1 and not new.removed.any() and new.loss < state.loss
    assert not dead_neurons(problem, new.network)[4]
    assert new.loss == pytest.approx(evaluate_loss(ctx, new.network)[0], rel=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_relu_squares_equal_the_diagonal_of_a(dim, rng):
    # Neurons inside, crossing and outside the domain (dead: 0) against the diagonal of the
    # exact pair integrals, and in 1D against adaptive quadrature.
    n = 9
    domain = interval(0.0, 1.0) if dim == 1 else box([[0.0, 1.0], [0.0, 1.0]])
    W = rng.standard_normal((n, dim))
    W /= np.linalg.norm(W, axis=1)[:, None]
    b = -np.einsum("ij,ij->i", W, rng.uniform(-0.3, 1.3, (n, dim)))
    b[0] = -np.sum(np.abs(W[0])) - 1.0  # dead on the whole domain
    squares = relu_squares(domain, W, b)
    diagonal = np.diag(pair_integrals(domain, W, b, np.arange(n), np.arange(n), ("A",))["A"])
    assert squares[0] == 0.0
    np.testing.assert_allclose(squares, diagonal, rtol=1e-12, atol=1e-15)
    if dim == 1:
        reference = [
            quad(
                lambda x, w=w, c=c: max(w * x + c, 0.0) ** 2,
                0.0,
                1.0,
                points=[float(np.clip(-c / w, 0.0, 1.0))],
                epsrel=1e-13,
            )[0]
            for w, c in zip(W[:, 0], b, strict=True)
        ]
        np.testing.assert_allclose(squares, reference, rtol=1e-11, atol=1e-15)


def test_hop_neuron_ranks_by_contribution():
    # Breakpoints 0.2, 0.5, 0.8 (w = 1): ||phi_i||^2 = (1 - t_i)^3 / 3 = 0.1707, 0.04167, 0.00267.
    # With c = 1, 1.5, 10 the contributions |c_i| ||phi_i|| are 0.413, 0.306, 0.516.
    t = np.array([0.2, 0.5, 0.8])
    problem = problem_with(t, np.ones(3))
    network = Network(problem.network.W, problem.network.b, np.array([1.0, 1.5, 10.0]))
    assert [hop_neuron(problem, network, k) for k in range(4)] == [1, 0, 2, 1]
