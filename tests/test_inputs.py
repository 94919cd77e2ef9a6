"""Configuration parsing, network validation and the messages users get for bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from distgn.assembly import pair_integrals
from distgn.config import load_config
from distgn.domain import box, interval, polygon
from distgn.errors import InputError
from distgn.network import Network, initial_network, validate
from distgn.problem import build_problem


def test_overrides_and_types(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[network]\nn = 32\n[solver]\ntol = 1e-6\n")
    cfg = load_config(path, ["network.n=48", "target.name=tanh_layer", "train.max_seconds=100"])
    assert cfg.network.n == 48 and cfg.target.name == "tanh_layer" and cfg.solver.tol == 1e-6
    assert cfg.train.max_seconds == 100.0 and isinstance(cfg.train.max_seconds, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("network.nn=3", "unknown config key network.nn"),
        ("netw.n=3", "unknown config section [netw]"),
        ("network.n=abc", "network.n = 'abc' must be of type int"),
        ("network.n=2.5", "network.n = 2.5 must be of type int"),
        ("network.output_bias=1", "network.output_bias = 1 must be true or false"),
        ("network", "must look like section.key=value"),
    ],
)
def test_bad_keys_are_named(override, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\nn = 3")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ('domain.kind="sphere"', "domain.kind = 'sphere' is not one of"),
        ("domain.bounds=[1.0, 0.0]", r"domain.bounds = \[1.0, 0.0\] is not ordered"),
        ('network.init="gaussian"', "network.init = 'gaussian'"),
        ('network.orientation="up"', "network.orientation = 'up'"),
        ('target.name="nope"', "target.name = 'nope' is not a built-in 1D target"),
        ('target.name="math:nothing_here"', "cannot be imported"),
        ("network.n=0", "network.n = 0 must be >= 1"),
    ],
)
def test_bad_problem_values(override, message):
    with pytest.raises(InputError, match=message):
        build_problem(load_config(None, [override]))


def test_polygon_validation():
    with pytest.raises(InputError, match="not a strictly convex polygon"):
        polygon([[0, 0], [1, 0], [0.2, 0.2], [0, 1]])
    square = polygon([[1, 1], [0, 0], [1, 0], [0, 1]])  # any order
    assert square.measure == pytest.approx(1.0)
    assert box([[0, 2], [0, 1]]).measure == pytest.approx(2.0)


def test_degenerate_neurons_are_named():
    dom = interval(0.0, 1.0)
    W, b = np.ones((4, 1)), -np.array([0.1, 0.4, 0.6, 0.9])
    validate(Network(W, b), dom)
    cases = [
        (Network(W, np.array([-0.1, np.nan, -0.6, -0.9])), r"NaN/inf parameters in neurons \[1\]"),
        (Network(np.array([[1.0], [0.0], [1.0], [1.0]]), b), r"w = 0 in neurons \[1\]"),
        (Network(W, -np.array([0.1, 1.5, 0.6, 0.9])), r"neurons \[1\] .* never active"),
        (
            Network(W * np.array([[1], [2], [1], [1]]), -np.array([0.1, 0.8, 0.6, 0.4])),
            "duplicate neurons .* 1 = 3",
        ),
        (
            Network(W, np.array([0.1, 0.2, 0.3, -0.5])),
            r"\[0, 1, 2\] \(3 in all\) are active on the whole",
        ),
    ]
    for net, message in cases:
        with pytest.raises(InputError, match=message):
            validate(net, dom)
    # A hyperplane that misses the domain on the active side is legal (affine on the domain).
    validate(Network(W, np.array([0.5, -0.4, -0.6, -0.9])), dom)


def test_random_init_is_seeded_and_crosses_the_domain():
    dom = polygon([[0, 0], [2, 0], [2.5, 1], [1, 2], [-0.5, 1]])
    a = initial_network(dom, 50, "random", seed=3)
    assert np.array_equal(a.W, initial_network(dom, 50, "random", seed=3).W)
    z = dom.vertices @ a.W.T + a.b
    assert np.all(z.max(axis=0) > 0) and np.all(z.min(axis=0) < 0)
    u = initial_network(box([[0, 1], [0, 1]]), 64, "uniform")
    validate(u, box([[0, 1], [0, 1]]))


@pytest.mark.parametrize("orientation", ["positive", "alternating", "random"])
def test_uniform_1d_start_has_a_positive_definite_mass_matrix(orientation):
    # Calibration (positive orientation): cond(A) = 3.96 n^4. A left- and a right-facing neuron
    # on one breakpoint span an affine function; three such pairs would make A singular.
    net = initial_network(interval(0.0, 1.0), 64, "uniform", seed=2, orientation=orientation)
    assert len(np.unique(net.breakpoints())) == 64
    index = np.arange(64)
    A = pair_integrals(interval(0.0, 1.0), net.W, net.b, index, index, ("A",))["A"]
    eigenvalues = np.linalg.eigvalsh(A)
    assert eigenvalues[0] > 0 and eigenvalues[-1] / eigenvalues[0] < 1e3 * 64**4


def test_uniform_2d_start_has_no_coincident_lines():
    # With an even number of directions every line at theta + pi coincided with one at theta:
    # A was singular (the c-solve deflated 29 of 64 neurons). cond(A) is 2.1e7 now.
    dom = box([[0.0, 1.0], [0.0, 1.0]])
    net = initial_network(dom, 64, "uniform")
    index = np.arange(64)
    A = pair_integrals(dom, net.W, net.b, index, index, ("A",))["A"]
    eigenvalues = np.linalg.eigvalsh(A)
    assert eigenvalues[0] > 0 and eigenvalues[-1] / eigenvalues[0] < 1e9


def test_parameters_from_file(tmp_path):
    path = tmp_path / "params.h5"
    with h5py.File(path, "w") as fh:
        fh["W"] = np.array([[1.0], [-1.0], [1.0]])
        fh["b"] = np.array([-0.2, 0.5, -0.7])
        fh["c"] = np.array([1.0, 2.0, 3.0])
    cfg = load_config(None, ['network.init="file"', f'network.file="{path}"'])
    net = build_problem(cfg).network
    assert net.n == 3 and net.c[2] == 3.0 and net.c0 is None
    with h5py.File(path, "w") as fh:
        fh["W"] = np.ones((3, 2))
        fh["b"] = np.zeros(3)
    with pytest.raises(InputError, match=r"expected \(n, 1\)"):
        build_problem(cfg)
    with pytest.raises(InputError, match="cannot be read"):
        build_problem(load_config(None, ['network.init="file"', 'network.file="/nonexistent.h5"']))
