"""Training: exact gradient and Gauss-Newton matrices, SgGN's removal rules and line search,
recovery of a representable target, baselines, run files and restart.

Serial tests (they also pass under mpiexec; MPI agreement is in test_training_mpi.py).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from distgn.assembly import layer_matrix, pair_integrals, target_integrals, target_moments
from distgn.config import load_config
from distgn.domain import box, interval, polygon
from distgn.errors import InputError, SolverError
from distgn.io import load_state, read_run
from distgn.network import Network
from distgn.problem import Problem, build_problem
from distgn.targets import Target, make_target
from distgn.training import baselines, sggn, train
from distgn.training.linesearch import line_search
from distgn.training.objective import Context, evaluate_loss, loss_and_gradient, network_moments

KINKS = np.array([0.3, 0.55, 0.8])
AMPLITUDES = np.array([1.0, -2.0, 1.5])


def relu_target(offset: float = 0.0) -> Target:
    """A sum of three ReLUs (plus a constant): exactly representable."""
    return Target(
        "relu3",
        lambda x: np.maximum(x[:, :1] - KINKS, 0.0) @ AMPLITUDES + offset,
        points=tuple(KINKS),
    )


def relu_problem(n: int, output_bias: bool = False, seed: int = 1) -> Problem:
    """The three-kink target and n neurons: three near the kinks, the rest random."""
    rng = np.random.default_rng(seed)
    t = np.sort(
        np.concatenate([KINKS + rng.uniform(-0.04, 0.04, 3), rng.uniform(0.02, 0.98, n - 3)])
    )
    return Problem(
        interval(0.0, 1.0),
        relu_target(0.25 if output_bias else 0.0),
        Network(np.ones((n, 1)), -t),
        output_bias,
    )


def config(tmp, *overrides: str):
    return load_config(
        None, ["solver.kind=dense", f"output.path={tmp / 'run.h5'}", "train.tol=0.0", *overrides]
    )


def random_network(dim: int, n: int, rng: np.random.Generator, output_bias: bool) -> Network:
    """Unit normals with offsets placing every hyperplane inside [0, 1]^d, random c (and c0)."""
    W = rng.standard_normal((n, dim))
    W /= np.linalg.norm(W, axis=1)[:, None]
    b = -np.einsum("ij,ij->i", W, rng.uniform(0.2, 0.8, (n, dim)))
    return Network(W, b, rng.standard_normal(n), 0.3 if output_bias else None)


@pytest.mark.parametrize("dim", [1, 2])
def test_gradient_matches_finite_differences(dim, rng):
    domain = interval(0.0, 1.0) if dim == 1 else box([[0.0, 1.0], [0.0, 1.0]])
    target = make_target("sine" if dim == 1 else "smooth", domain)
    network = random_network(dim, 5, rng, output_bias=True)
    ctx = Context(
        Problem(domain, target, network, True),
        MPI.COMM_SELF,
        load_config(None, ["solver.kind=dense"]).solver,
    )
    grad = loss_and_gradient(ctx, network)
    assert grad.loss == pytest.approx(evaluate_loss(ctx, network)[0], rel=1e-12)
    theta = baselines.pack(network)
    exact = baselines.flat_gradient(grad)
    h = 1e-6
    numeric = np.empty_like(theta)
    for k in range(theta.size):
        step = np.zeros_like(theta)
        step[k] = h
        plus = evaluate_loss(ctx, baselines.unpack(theta + step, network))[0]
        minus = evaluate_loss(ctx, baselines.unpack(theta - step, network))[0]
        numeric[k] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(exact, numeric, rtol=0, atol=1e-7 * np.max(np.abs(exact)))


@pytest.mark.parametrize("width", [1e-3, 1e-5, 1e-6])
def test_2d_loss_of_a_sharp_ramp_is_exact(width, rng):
    """A ramp of the given width (two neurons, c = +-1/width) across line_jump's line, plus
    three neurons of small c: J against the closed form (ramp alone: 2 J = width |chord| / 3),
    far below the rounding of c^T A c at widths 1e-5 and 1e-6 (there ``n eps (sum |c_i|
    |phi_i|)^2`` is 2e-5 and 2e-3), and the gradient moments against the plain pair integrals
    where those are accurate (width 1e-3)."""
    domain = box([[0.0, 1.0], [0.0, 1.0]])
    target = make_target("line_jump", domain)
    normal, offset = target.lines[0]
    chord = 1.0 / normal[0]  # the line crosses the bottom and top edges
    ramp = Network(np.array([normal, normal]), np.array([width - offset, -offset]))
    extra = random_network(2, 3, rng, output_bias=False)
    scale = 1e-2 * width  # small enough not to hide the ramp's error
    network = Network(
        np.vstack([ramp.W, extra.W]),
        np.concatenate([ramp.b, extra.b]),
        np.concatenate([np.array([1.0, -1.0]) / width, scale * extra.c]),
    )
    solver = load_config(None, ["solver.kind=dense"]).solver
    ctx = Context(Problem(domain, target, network), MPI.COMM_SELF, solver)
    grad = loss_and_gradient(ctx, network)
    only_ramp = Network(network.W, network.b, np.concatenate([network.c[:2], np.zeros(3)]))
    exact = width * chord / 3
    assert 2 * loss_and_gradient(ctx, only_ramp).loss == pytest.approx(exact, rel=1e-9 / width)
    n = network.n
    G = pair_integrals(domain, network.W, network.b, np.arange(n), np.arange(n), ("G",))["G"]
    um = target_moments(domain, target, network.W, network.b, np.arange(n))
    plain = np.einsum("ijkl,jl->ik", G, network.c[:, None] * network.r) - um
    if width > 1e-4:
        np.testing.assert_allclose(grad.moments, plain, rtol=0, atol=1e-10 * np.max(np.abs(plain)))


def _quadrature(domain, m: int) -> tuple[np.ndarray, float]:
    """Midpoint points of a fine grid on [0, 1]^d and the cell measure."""
    centres = (np.arange(m) + 0.5) / m
    if domain.dim == 1:
        return centres[:, None], 1.0 / m
    X, Y = np.meshgrid(centres, centres, indexing="ij")
    return np.column_stack([X.ravel(), Y.ravel()]), 1.0 / m**2


@pytest.mark.parametrize("dim, m, atol", [(1, 200_000, 1e-5), (2, 700, 4e-3)])
def test_gauss_newton_matrices_match_quadrature(dim, m, atol, rng):
    domain = interval(0.0, 1.0) if dim == 1 else box([[0.0, 1.0], [0.0, 1.0]])
    network = random_network(dim, 4, rng, output_bias=True)
    problem = Problem(
        domain, make_target("step" if dim == 1 else "line_jump", domain), network, True
    )
    x, weight = _quadrature(domain, m)
    z = x @ network.W.T + network.b
    h = (z > 0).astype(float)
    xhat = np.column_stack([x, np.ones(len(x))])
    # Jacobian of v in r_i is c_i h_i xhat; in c_i it is phi_i, in c0 it is 1.
    jac_r = (network.c * h)[:, :, None] * xhat[:, None, :]
    jac_r = jac_r.reshape(len(x), -1)
    n = network.n
    G = layer_matrix(
        pair_integrals(domain, network.W, network.b, np.arange(n), np.arange(n), ("G",))["G"]
    )
    D = np.repeat(network.c, dim + 1)
    scale = np.max(np.abs(D[:, None] * G * D[None, :]))
    np.testing.assert_allclose(
        D[:, None] * G * D[None, :], jac_r.T @ jac_r * weight, rtol=0, atol=atol * scale
    )
    jac = np.column_stack([np.maximum(z, 0.0), np.ones(len(x)), jac_r])
    ctx = Context(problem, MPI.COMM_SELF, load_config(None, ["solver.kind=dense"]).solver)
    M = baselines.gauss_newton_matrix(ctx, network)
    np.testing.assert_allclose(M, jac.T @ jac * weight, rtol=0, atol=atol * np.max(np.abs(M)))


@pytest.mark.parametrize(
    "variant, output_bias", [("alternating", False), ("varpro", False), ("alternating", True)]
)
def test_recovers_a_sum_of_relus(variant, output_bias, tmp_path):
    problem = relu_problem(8, output_bias)
    result = train(
        problem, config(tmp_path, f"train.variant={variant}", "train.max_iter=30"), MPI.COMM_SELF
    )
    # Stopped by the parameter test (changes below sqrt(eps)) or max_iter. Where the run ends
    # depends on rounding (over 32 variants of this case, seeds 1-8, the relative error after 30
    # iterations ranges from 1e-14 to 1e-7, median 1e-9); at a relative error of 1e-7 a kink
    # that carries an amplitude of 1 can still be ~1e-6 away (nearby neurons share its jump).
    assert result["relative_l2_error"] <= 1e-7, result
    network, history, _ = load_state(str(tmp_path / "run.h5"))
    assert history["loss"][-1] == result["loss"]
    t = network.breakpoints()[np.abs(network.c) > 1e-3]
    assert np.max(np.min(np.abs(t[:, None] - KINKS[None, :]), axis=0)) < 1e-5


def _state(problem: Problem) -> tuple[Context, sggn.State]:
    ctx = Context(problem, MPI.COMM_SELF, load_config(None, ["solver.kind=dense"]).solver)
    return ctx, sggn.start(ctx, problem.network)[0]


def test_zero_coefficient_keeps_the_step_defined():
    ctx, state = _state(relu_problem(6))
    c = state.network.c.copy()
    c[2] = 0.0
    network = Network(state.network.W, state.network.b, c, None)
    live = ~state.removed
    grad = loss_and_gradient(ctx, network, live)
    direction = sggn.gn_direction(ctx, network, live, grad, drop_tol=1e-10)
    assert np.all(np.isfinite(direction.p))
    assert not direction.moved[2] and np.all(direction.p[2] == 0.0)
    assert direction.moved.sum() == live.sum() - 1
    state = sggn.State(network, state.removed, *evaluate_loss(ctx, network))
    new, stats, grad = sggn.iterate(ctx, state, "alternating", 1e-10)
    assert new is not None and new.loss < state.loss and np.all(np.isfinite(new.network.c))
    assert grad.loss == new.loss


def test_layer_solve_falls_back_to_the_shifted_hss_factorization(monkeypatch):
    ctx, state = _state(relu_problem(6))
    live = ~state.removed
    grad = loss_and_gradient(ctx, state.network, live)
    reference = sggn.gn_direction(ctx, state.network, live, grad, drop_tol=1e-10)
    solve = sggn._layer_solve

    def failing_dense(ctx, sub, moments, comm, solver, damping):
        if solver.kind == "dense":
            raise SolverError("G is not numerically positive definite")
        return solve(ctx, sub, moments, comm, solver, damping)

    monkeypatch.setattr(sggn, "_layer_solve", failing_dense)
    direction = sggn.gn_direction(ctx, state.network, live, grad, drop_tol=1e-10)
    assert direction.rung == sggn.DEFLATION_RUNGS
    # G is well conditioned here: hss at tol 1e-14 reproduces the dense Gauss-Newton step.
    np.testing.assert_allclose(direction.p, reference.p, rtol=1e-8, atol=1e-10)


def test_2d_c_solve_zeroes_the_neurons_it_sets_aside(rng):
    """In 2D a neuron set aside from the c-solve (here one of a pair of lines 1e-11 apart with
    large cancelling coefficients) gets c = 0, and the loss is the least-squares loss over the
    neurons kept, computed independently from the exact A, F and int u^2."""
    domain = box([[0.0, 1.0], [0.0, 1.0]])
    target = make_target("line_jump", domain)
    base = random_network(2, 6, rng, output_bias=False)
    W = np.vstack([base.W, base.W[:1]])
    b = np.concatenate([base.b, base.b[:1] - 1e-11])
    c = np.concatenate([base.c, [-0.9e4]])
    c[0] = 1e4
    network = Network(W, b, c)
    ctx = Context(
        Problem(domain, target, network),
        MPI.COMM_SELF,
        load_config(None, ["solver.kind=dense"]).solver,
    )
    out = sggn.solve_output(ctx, network, np.ones(7, dtype=bool))
    assert out.deflated == 1 and not out.rejected
    assert out.network.c[6] == 0.0 and np.all(out.network.c[:6] != 0.0)
    kept = np.arange(6)
    A = pair_integrals(domain, W, b, kept, kept, ("A",))["A"]
    moments = target_moments(domain, target, W, b, kept)
    F = np.einsum("ik,ik->i", moments, np.column_stack([W, b])[kept])
    coefficients = np.linalg.solve(A, F)
    square = target_integrals(domain, target)[1]
    assert out.loss == pytest.approx(0.5 * (square - coefficients @ F), rel=1e-10)
    np.testing.assert_allclose(out.network.c[:6], coefficients, rtol=1e-8)


def test_duplicate_and_dead_neurons_are_deflated_and_removed(tmp_path):
    t = np.array([0.2, 0.4, 0.4, 0.6, 1.5])  # neurons 1, 2 coincide; neuron 4 is dead
    problem = Problem(
        interval(0.0, 1.0), make_target("sine", interval(0.0, 1.0)), Network(np.ones((5, 1)), -t)
    )
    ctx, state = _state(problem)
    assert state.removed.tolist() == [False, False, False, False, True]
    start = sggn.solve_output(ctx, state.network, ~state.removed)
    assert start.deflated == 1 and not start.rejected
    assert np.count_nonzero(state.network.c[[1, 2]]) == 1 and state.network.c[4] == 0.0
    new, stats, _ = sggn.iterate(ctx, state, "alternating", 1e-10)
    assert new is not None and new.loss < state.loss and stats["excluded"] >= 1
    train(problem, config(tmp_path, "train.max_iter=2"), MPI.COMM_SELF)
    with h5py.File(tmp_path / "run.h5", "r") as fh:
        assert list(fh["network/removed"]) == [4] and fh["network/c"][4] == 0.0
        assert fh["network/W"].shape == (5, 1)


def test_line_search_steps():
    # A quadratic with its minimum at the Gauss-Newton step: accepted at once, then the
    # extrapolation is not tried (its minimiser is not beyond 2).
    calls = []

    def quadratic(g: float, at: float = 1.0) -> float:
        calls.append(g)
        return (g - at) ** 2

    assert line_search(quadratic, 1.0, -2.0) == (1.0, 0.0, 1)
    # Minimum at 7: one extrapolation to 4 (MAX_GROWTH); minimum at 0.01: cut, then refined to
    # the vertex of the parabola through 0, the accepted and the rejected step (exact here).
    gamma, value, count = line_search(lambda g: quadratic(g, 7.0), 49.0, -14.0)
    assert gamma == 4.0 and value == 9.0 and count == 2
    gamma, value, count = line_search(lambda g: quadratic(g, 0.01), 1e-4, -0.02)
    assert gamma == pytest.approx(0.01, rel=1e-12) and count <= 5
    # No decrease along an ascent direction or a rising function.
    assert line_search(lambda g: 1.0 + g, 1.0, 1.0)[:2] == (0.0, 1.0)
    assert line_search(lambda g: 1.0 + g, 1.0, -1e-30)[:2] == (0.0, 1.0)


@pytest.mark.parametrize("method", ["adam", "bfgs", "lm"])
def test_baselines_start_from_the_same_iterate_and_decrease(method, tmp_path):
    problem = relu_problem(8)
    reference = train(problem, config(tmp_path, "train.max_iter=0"), MPI.COMM_SELF)
    result = train(
        problem,
        config(
            tmp_path, f"train.method={method}", "train.max_iter=25", "train.learning_rate=0.001"
        ),
        MPI.COMM_SELF,
    )
    assert result["initial_loss"] == reference["initial_loss"]
    assert result["loss"] < 0.8 * result["initial_loss"]
    _, history, _ = load_state(str(tmp_path / "run.h5"))
    assert {"loss", "l2_error", "step", "grad_norm", "seconds"} <= set(history)


def test_run_file_and_restart_continue_the_history(tmp_path):
    problem = relu_problem(8, output_bias=True, seed=3)

    def config(tmp, *overrides):  # no stop by the convergence tests within the 8 iterations
        return globals()["config"](tmp, "train.patience=100", *overrides)

    straight = train(problem, config(tmp_path, "train.max_iter=8"), MPI.COMM_SELF)
    expected, _, _ = load_state(str(tmp_path / "run.h5"))
    train(problem, config(tmp_path, "train.max_iter=5", "train.checkpoint_every=2"), MPI.COMM_SELF)
    with h5py.File(tmp_path / "run.h5", "r") as fh:
        assert {"W", "b", "c", "c0", "removed"} <= set(fh["network"])
        assert fh["network/W"].shape == (8, 1) and fh["network/c"].shape == (8,)
    state = read_run(str(tmp_path / "run.h5"))
    assert state.network.c0 is not None and state.result["stop_reason"] == "max_iter"
    np.testing.assert_array_equal(state.history["iteration"], np.arange(6))
    resumed = train(problem, config(tmp_path, "train.max_iter=8"), MPI.COMM_SELF, restart=state)
    final, history, _ = load_state(str(tmp_path / "run.h5"))
    np.testing.assert_array_equal(history["iteration"], np.arange(9))
    assert resumed["total_iterations"] == 8 and resumed["iterations"] == 3
    np.testing.assert_array_equal(final.r, expected.r)  # bit-identical on the same ranks
    np.testing.assert_array_equal(final.c, expected.c)
    assert resumed["loss"] == straight["loss"]


def test_two_dimensional_polygon_training_decreases(tmp_path):
    pentagon = polygon([[0.0, 0.0], [2.0, 0.0], [2.5, 1.0], [1.0, 2.0], [-0.5, 1.0]])
    from distgn.network import initial_network

    problem = Problem(
        pentagon,
        make_target("line_jump", pentagon),
        initial_network(pentagon, 16, "random", seed=2),
    )
    for variant in ("alternating", "varpro"):
        result = train(
            problem, config(tmp_path, "train.max_iter=4", f"train.variant={variant}"), MPI.COMM_SELF
        )
        assert result["loss"] < 0.8 * result["initial_loss"], result


@pytest.mark.parametrize(
    "key, value",
    [
        ("method", "sgd"),
        ("variant", "newton"),
        ("learning_rate", "0.0"),
        ("lr_decay", "1.5"),
        ("damping", "-1e-3"),
    ],
)
def test_bad_train_config_is_rejected(key, value, tmp_path):
    with pytest.raises(InputError, match=f"train.{key}"):
        train(relu_problem(4), config(tmp_path, f"train.{key}={value}"), MPI.COMM_SELF)


def test_converged_run_stops_with_tol_and_records_decade_times(tmp_path):
    # The three-kink target is representable: SgGN reaches the rounding level of J and must stop
    # there by itself (stop reason tol), long before max_iter.
    problem = relu_problem(8)
    result = train(
        problem, config(tmp_path, "train.max_iter=200", "train.tol=1e-12"), MPI.COMM_SELF
    )
    assert result["stop_reason"] == "tol" and result["iterations"] < 200, result
    assert result["relative_l2_error"] < 1e-7
    _, history, saved = load_state(str(tmp_path / "run.h5"))
    times = result["seconds_to"]
    assert list(times)[:4] == ["1e-1", "1e-2", "1e-3", "1e-4"]
    for name, seconds in times.items():
        first = np.flatnonzero(history["relative_l2_error"] <= float(name))[0]
        assert seconds == history["seconds"][first]
    assert list(times.values()) == sorted(times.values())


def test_window_tolerance_stops_a_stalled_run(tmp_path):
    # tol = 1e-2 over a window of 3 iterations: stops at the first iterate whose loss is at most
    # 1e-2 times the initial loss below the loss 3 iterations earlier.
    result = train(
        relu_problem(8),
        config(
            tmp_path,
            "train.max_iter=500",
            "train.tol=1e-2",
            "train.patience=3",
            "train.method=adam",
            "train.learning_rate=1e-3",
        ),
        MPI.COMM_SELF,
    )
    _, history, _ = load_state(str(tmp_path / "run.h5"))
    loss = history["loss"]
    stalled = [0 <= loss[k - 3] - loss[k] <= 1e-2 * loss[0] for k in range(3, len(loss))]
    assert result["stop_reason"] == "tol" and stalled[-1] and not any(stalled[:-1])


def test_repeated_c_solve_failure_stops_with_exit_status_2(tmp_path, monkeypatch, caplog):
    problem = relu_problem(8)
    ctx, state = _state(problem)
    correction = sggn._correction
    calls = {"count": 0}

    def failing(ctx, sub, ref, comm):
        calls["count"] += 1
        if calls["count"] > 1:  # the start's c-solve succeeds, every later one fails
            raise SolverError("A is not numerically positive definite")
        return correction(ctx, sub, ref, comm)

    monkeypatch.setattr(sggn, "_correction", failing)
    with pytest.raises(SolverError, match="c_solve_failed"):
        train(problem, config(tmp_path, "train.max_iter=50"), MPI.COMM_SELF)
    _, history, saved = load_state(str(tmp_path / "run.h5"))
    assert saved["stop_reason"] == "c_solve_failed" and saved["iterations"] == sggn.C_SOLVE_FAILURES
    assert "the c-solve failed (A is not numerically positive definite)" in caplog.text
    from distgn.cli import main

    calls["count"] = 0
    path = tmp_path / "train.toml"
    path.write_text(
        '[domain]\nkind = "interval"\nbounds = [0.0, 1.0]\n[network]\nn = 8\n'
        '[target]\nname = "step"\n[solver]\nkind = "dense"\n'
        f'[train]\nmax_iter = 20\n[output]\npath = "{tmp_path / "cli.h5"}"\n'
    )
    assert main(["train", str(path)]) == 2


def test_1d_network_moments_equal_gauss_quadrature():
    # The 1D path (O(n log n)) against Gauss rules between all kinks: neurons of both
    # orientations, kinks outside [L, R], a coincident pair, a source network and rows.
    rng = np.random.default_rng(1)
    n, L, R = 40, -0.5, 2.0
    W, b = rng.standard_normal((n, 1)), rng.standard_normal(n)
    b[4:8] = -W[4:8, 0] * np.array([-1.0, 3.0, -0.7, 2.5])
    W[8], b[8] = 2.0 * W[9], 2.0 * b[9]
    c = rng.standard_normal(n)
    c[rng.random(n) < 0.3] = 0.0
    net = Network(W, b, c, None)
    source = Network(1.3 * W[::-1], 1.3 * b[::-1], rng.standard_normal(n), None)  # same kinks
    problem = Problem(interval(L, R), relu_target(), net, False)
    kinks = -b / W[:, 0]
    z = np.unique(np.concatenate([[L, R], kinks[(kinks > L) & (kinks < R)]]))
    g, gw = np.polynomial.legendre.leggauss(4)
    x = (0.5 * (z[1:] + z[:-1])[:, None] + 0.5 * np.diff(z)[:, None] * g).ravel()
    weight = (0.5 * np.diff(z)[:, None] * gw).ravel()
    rows = np.arange(3, 31)
    for src in (net, source):
        pre = np.outer(x, src.W[:, 0]) + src.b
        v = np.maximum(pre, 0.0) @ src.c
        active = np.outer(x, W[rows, 0]) + b[rows] > 0
        reference = np.column_stack(
            [(active * (v * x * weight)[:, None]).sum(0), (active * (v * weight)[:, None]).sum(0)]
        )
        got = network_moments(problem, net, rows, None if src is net else src)
        assert np.max(np.abs(got - reference)) <= 1e-14 * np.max(np.abs(reference))
    _, squares = network_moments(problem, net, rows, diagonal=True)
    phi = np.maximum(np.outer(x, W[rows, 0]) + b[rows], 0.0)
    reference = np.where(c[rows] != 0, (phi**2 * weight[:, None]).sum(0), 0.0)
    assert np.max(np.abs(squares - reference)) <= 1e-14 * np.max(reference)


def power_config(tmp, *overrides: str):
    """1D power target, n = 8: SgGN reaches tol 1e-6 after 23 iterations."""
    return config(
        tmp,
        'domain.kind="interval"',
        "domain.bounds=[0.0, 1.0]",
        "target.name=power",
        "network.n=8",
        "train.tol=1e-6",
        *overrides,
    )


def test_hops_keep_the_best_basin_and_restart_the_window(tmp_path):
    # hop_tol = 0.5 ends each hop's basin as soon as its window is full: both hops land in worse
    # basins here, so the run file must hold the iterate before the first hop, not the last.
    cfg = power_config(tmp_path, "train.hops=2", "train.hop_tol=0.5", "train.max_iter=200")
    problem = build_problem(cfg)
    result = train(problem, cfg, MPI.COMM_SELF)
    network, history, saved = load_state(str(tmp_path / "run.h5"))
    hops = np.flatnonzero(history["hop"] == 1)
    loss = history["loss"]
    assert hops.size == 2 == result["hops"] and result["stop_reason"] == "hop_tol"
    # Each hop's window starts at the hop: patience iterations, then hop_tol.
    assert hops[1] - hops[0] == cfg.train.patience + 1
    assert len(loss) - 1 - hops[1] == cfg.train.patience
    # The first basin ended with tol: its last window fell by at most tol times the initial loss.
    first = loss[: hops[0]]
    assert 0 <= first[-1 - cfg.train.patience] - first[-1] <= 1e-6 * loss[0]
    best = hops[0] - 1
    assert loss[best] == loss.min() < loss[-1]
    assert result["loss"] == loss[best] == saved["loss"]

    # The saved network is that iterate: its L2 error by quadrature, independently.
    def squared(x: float) -> float:
        point = np.array([[x]])
        return float((network.evaluate(point)[0] - problem.target(point)[0]) ** 2)

    from scipy.integrate import quad

    kinks = np.sort(np.clip(-network.b / network.W[:, 0], 0.0, 1.0))
    edges = np.unique(np.concatenate([[0.0, 0.5], kinks, [1.0]]))  # 0.5: |x - 0.5|^(2/3)
    pieces = zip(edges[:-1], edges[1:], strict=True)
    error = np.sqrt(
        sum(quad(squared, a, z, epsabs=0, epsrel=1e-12, limit=500)[0] for a, z in pieces)
    )
    assert error == pytest.approx(result["l2_error"], rel=1e-7)
    assert error == pytest.approx(history["l2_error"][best], rel=1e-7)


def test_hops_need_a_1d_or_2d_domain(tmp_path):
    cfg = config(
        tmp_path,
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]",
        "target.name=auto",
        "network.n=4",
        "train.hops=1",
    )
    with pytest.raises(InputError, match="train.hops = 1"):
        train(build_problem(cfg), cfg, MPI.COMM_SELF)
