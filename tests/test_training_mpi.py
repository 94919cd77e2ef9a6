"""Training on 1, 2 and 4 ranks: the iterates agree with a serial run, the run file and restart.

(tests/test_training_determinism.py runs ``distgn train`` on 1, 2, 3 and 4 ranks.)

Every rank also runs the serial reference on COMM_SELF (the problems are small). Run with
``mpiexec -n P python -m mpi4py -m pytest --with-mpi -m mpi tests/test_training_mpi.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from distgn.config import load_config
from distgn.io import load_state, read_run
from distgn.problem import build_problem
from distgn.training import train

PENTAGON = "domain.vertices=[[0.0, 0.0], [2.0, 0.0], [2.5, 1.0], [1.0, 2.0], [-0.5, 1.0]]"


def run(comm: MPI.Comm, folder, name: str, *overrides: str) -> tuple[dict, object]:
    """Train on ``comm`` (output file per communicator) and return the result and the network."""
    path = folder / (
        f"{name}-serial-{MPI.COMM_WORLD.rank}.h5"
        if comm.size == 1 and MPI.COMM_WORLD.size > 1
        else f"{name}.h5"
    )
    config = load_config(
        None, ["solver.kind=dense", "train.tol=0.0", f"output.path={path}", *overrides]
    )
    result = train(build_problem(config), config, comm)
    return result, load_state(str(path))[0]


def relative_difference(a, b) -> float:
    """Largest difference of (W, b, c) relative to their size, over the neurons not removed.

    A removed (dead) neuron keeps the parameters it had when its hyperplane left the domain,
    which are irrelevant (c = 0); both runs must have removed the same neurons.
    """
    live = b.c != 0
    assert np.array_equal(a.c != 0, live)
    x = np.concatenate([a.r[live].ravel(), a.c[live]])
    y = np.concatenate([b.r[live].ravel(), b.c[live]])
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


@pytest.mark.mpi
@pytest.mark.parametrize(
    "overrides",
    [
        ("target.name=sine", "network.n=12", "train.max_iter=20"),
        ("target.name=sine", "network.n=12", "train.max_iter=20", "train.variant=varpro"),
        (
            "domain.kind=polygon",
            PENTAGON,
            "target.name=smooth",
            "network.n=8",
            "network.init=random",
            "train.max_iter=20",
        ),
    ],
    ids=["1d-alternating", "1d-varpro", "2d-alternating"],
)
def test_smooth_iterates_agree_with_serial(overrides, comm, shared_tmp):
    parallel, network = run(comm, shared_tmp, "smooth", *overrides)
    serial, reference = run(MPI.COMM_SELF, shared_tmp, "smooth", *overrides)
    assert parallel["ranks"] == comm.size and parallel["iterations"] == serial["iterations"]
    assert relative_difference(network, reference) <= 1e-8
    assert parallel["loss"] == pytest.approx(serial["loss"], rel=1e-8)


@pytest.mark.mpi
@pytest.mark.parametrize(
    "overrides",
    [
        ("target.name=step", "network.n=25", "train.max_iter=8"),
        (
            "domain.kind=box",
            "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
            "target.name=line_jump",
            "network.n=24",
            "train.max_iter=8",
        ),
    ],
    ids=["1d-step", "2d-line-jump"],
)
def test_discontinuous_errors_agree_with_serial(overrides, comm, shared_tmp):
    """Trajectories on a jump are the most sensitive to rounding (which neurons pair up, and how
    far the pair can sharpen before A and G are singular to working precision): with
    ``train.deterministic`` (the default) they still agree with the serial run."""
    parallel, _ = run(comm, shared_tmp, "jump", *overrides)
    serial, _ = run(MPI.COMM_SELF, shared_tmp, "jump", *overrides)
    assert parallel["l2_error"] == pytest.approx(serial["l2_error"], rel=1e-8)
    assert parallel["loss"] < 0.7 * parallel["initial_loss"]


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["adam", "bfgs", "lm"])
def test_baselines_agree_with_serial(method, comm, shared_tmp):
    overrides = (
        "target.name=sine",
        "network.n=10",
        "train.max_iter=12",
        f"train.method={method}",
        "train.learning_rate=0.001",
    )
    parallel, network = run(comm, shared_tmp, method, *overrides)
    serial, reference = run(MPI.COMM_SELF, shared_tmp, method, *overrides)
    assert relative_difference(network, reference) <= 1e-8


@pytest.mark.mpi
def test_run_file_and_restart(comm, shared_tmp):
    path = shared_tmp / "restart.h5"
    base = [
        "solver.kind=dense",
        "target.name=tanh_layer",
        "network.n=12",
        "network.output_bias=true",
        f"output.path={path}",
        "train.tol=0.0",
    ]
    config = load_config(None, base + ["train.max_iter=6"])
    problem = build_problem(config)
    train(problem, config, comm)
    straight, _, _ = load_state(str(path))
    config = load_config(None, base + ["train.max_iter=4", "train.checkpoint_every=1"])
    train(problem, config, comm)
    state = read_run(str(path))
    network, history, result = state.network, state.history, state.result
    assert network.c0 is not None and network.c.shape == (12,)
    assert result["ranks"] == comm.size and list(history["iteration"]) == list(range(5))
    config = load_config(None, base + ["train.max_iter=6"])
    resumed = train(build_problem(config), config, comm, restart=state)
    final, history, _ = load_state(str(path))
    assert list(history["iteration"]) == list(range(7)) and resumed["total_iterations"] == 6
    np.testing.assert_allclose(final.r, straight.r, rtol=1e-12, atol=1e-12)
