"""Staged growth (distgn.training.growth): the stage sizes, the grown network, and runs that grow.

References: the grown network is checked neuron by neuron against its definition (kept neurons
bit for bit, copies at the documented shifts); the fit at the start of a stage against the dense
least-squares fit of the stage before (the grown span contains the old one).
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from distgn import io
from distgn.config import load_config
from distgn.errors import InputError
from distgn.network import activity, duplicate_pairs
from distgn.problem import build_problem
from distgn.training import train
from distgn.training.deflation import normalise
from distgn.training.growth import grow, offsets
from distgn.training.objective import Context
from distgn.training.sggn import grown, start

BOX = ['domain.kind="box"', "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]"]


def config(extra: list[str]):
    return load_config(None, ["solver.kind=dense", *extra])


@pytest.mark.parametrize(
    "grow_from, growth, n, sizes",
    [
        (0, 4, 64, [64]),
        (16, 4, 256, [16, 64, 256]),
        (16, 4, 100, [16, 64, 100]),
        (3, 2, 12, [3, 6, 12]),
    ],
)
def test_stage_sizes(grow_from, growth, n, sizes):
    cfg = config([f"train.grow_from={grow_from}", f"train.growth={growth}"]).train
    assert cfg.stage_sizes(n) == sizes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.grow_from=4", "train.method=adam"], "staged growth needs train.method = sggn"),
        (["train.grow_from=4", "network.init=file"], "not network.init = file"),
        (["train.growth=1"], "train.growth"),
        (["train.grow_spread=0"], "train.grow_spread"),
    ],
)
def test_bad_growth_settings_are_refused(extra, message):
    with pytest.raises(InputError, match=message):
        cfg = config(extra)
        from distgn.training.loop import stage_sizes

        stage_sizes(cfg)


def test_offsets_alternate_and_grow():
    assert offsets(6).tolist() == [1.0, -1.0, 2.0, -2.0, 3.0, -3.0]


@pytest.mark.parametrize("dim", [1, 2])
def test_grown_network_keeps_every_live_neuron_and_adds_shifted_copies(dim):
    extra = BOX + ["target.name=disk"] if dim == 2 else ["target.name=step"]
    problem = build_problem(config(extra + ["network.n=10"]))
    network = normalise(problem.network)
    rng = np.random.default_rng(3)
    network = type(network)(network.W, network.b, rng.standard_normal(network.n), 0.0)
    live = np.ones(network.n, dtype=bool)
    live[4] = False
    spacing = 0.01
    new = grow(network, live, problem.domain, 37, spacing)
    assert new.n == 37
    kept = np.flatnonzero(live)
    # The live neurons first, bit for bit, with their c; the copies have c = 0.
    np.testing.assert_array_equal(new.W[:9], network.W[kept])
    np.testing.assert_array_equal(new.b[:9], network.b[kept])
    np.testing.assert_array_equal(new.c[:9], network.c[kept])
    assert not new.c[9:].any() and new.c0 == network.c0
    # Each copy is a kept neuron's hyperplane shifted by an allowed multiple of the spacing,
    # the first round in order of decreasing |c|.
    _, affine = activity(network.W[kept], network.b[kept], problem.domain)
    order = np.flatnonzero(~affine)[np.argsort(-np.abs(network.c[kept][~affine]), kind="stable")]
    allowed = set(offsets(8).tolist())
    for j in range(9, 37):
        source = np.flatnonzero(np.all(network.W[kept] == new.W[j], axis=1))
        shifts = (new.b[j] - network.b[kept][source]) / spacing
        assert any(abs(s - round(s)) < 1e-9 and round(s) in allowed for s in shifts)
    first_round = min(order.size, 28)
    np.testing.assert_array_equal(new.W[9 : 9 + first_round], network.W[kept][order[:first_round]])
    np.testing.assert_allclose(
        new.b[9 : 9 + first_round], network.b[kept][order[:first_round]] + spacing, rtol=1e-15
    )
    dead, every = activity(new.W, new.b, problem.domain)
    assert not dead.any() and np.count_nonzero(every) == np.count_nonzero(affine)
    assert duplicate_pairs(new.W, new.b).size == 0


def test_copies_that_would_duplicate_a_neuron_are_skipped():
    problem = build_problem(config(["target.name=step", "network.n=4"]))
    network = normalise(problem.network)  # breakpoints 0, 1/4, 1/2, 3/4, all facing right
    network = type(network)(network.W, network.b, np.ones(4), None)
    # Copies at +-1/8 are new; from the second round on (+-1/4, ...) they land on a neuron, on
    # 0 (active on the whole interval) or outside, and are skipped: the eight places left on
    # the 1/8 grid fill up, and a ninth neuron has no room.
    new = grow(network, np.ones(4, dtype=bool), problem.domain, 8, 0.125)
    assert new.n == 8 and duplicate_pairs(new.W, new.b).size == 0
    np.testing.assert_allclose(np.sort(-new.b / new.W[:, 0]), np.arange(8) / 8, atol=1e-15)
    with pytest.raises(InputError, match="no room for 9 neurons"):
        grow(network, np.ones(4, dtype=bool), problem.domain, 9, 0.125)


def test_unreachable_size_is_an_input_error():
    problem = build_problem(config(["target.name=step", "network.n=2"]))
    network = normalise(problem.network)
    network = type(network)(network.W, network.b, np.ones(2), None)
    with pytest.raises(InputError, match="no room for 200 neurons"):
        grow(network, np.ones(2, dtype=bool), problem.domain, 200, 0.5)


@pytest.mark.parametrize("dim", [1, 2])
def test_a_stage_starts_at_least_as_good_as_the_last_one_ended(dim):
    extra = BOX + ["target.name=disk"] if dim == 2 else ["target.name=step"]
    cfg = config(extra + ["network.n=6"])
    problem = build_problem(cfg)
    ctx = Context(problem, MPI.COMM_SELF, cfg.solver, True)
    state, _ = start(ctx, problem.network)
    new, _ = grown(ctx, state, 24, 0.03, 0.0)
    assert new.network.n == 24
    # Independent reference: the dense least-squares fit on the old neurons alone is the loss
    # of ``start``; the grown span contains it, so the new loss is not larger (to rounding).
    assert new.loss <= state.loss * (1 + 1e-10)
    assert new.loss < 0.99 * state.loss  # and the copies do help on these targets


@pytest.mark.parametrize("dim", [1, 2])
def test_growing_run_ends_at_network_n_with_a_history_of_its_stages(tmp_path, dim):
    extra = BOX + ["target.name=line_jump"] if dim == 2 else ["target.name=step"]
    keys = extra + [
        "network.n=12",
        "train.grow_from=3",
        "train.growth=2",
        "train.stage_iter=100",
        "train.max_iter=400",
        f"output.path={tmp_path / 'run.h5'}",
        "checkpoint.every=0",
    ]
    cfg = config(keys)
    result = train(build_problem(cfg), cfg, MPI.COMM_SELF)
    assert result["n"] == 12
    saved = io.read_run(str(tmp_path / "run.h5"))
    assert saved.network.n == 12 and saved.optimizer["stage"] == 2
    history = saved.history
    rows = np.flatnonzero(history["grow"] == 1)
    assert history["n"][rows].tolist() == [6.0, 12.0]
    assert rows[0] <= 101 and rows[1] - rows[0] <= 101  # stage_iter caps the first two stages
    assert history["n"][0] == 3 and history["n"][-1] == 12
    # SgGN's loss never increases, across the growths too.
    assert np.all(np.diff(history["loss"]) <= 1e-12 * history["loss"][0])
    # The same problem without growth, from 12 neurons (400 iterations): the staged run is not
    # worse here (2D: 7.7e-4 against 5.3e-3).
    plain = config(keys[:-2] + [f"output.path={tmp_path / 'plain.h5'}", "train.grow_from=0"])
    baseline = train(build_problem(plain), plain, MPI.COMM_SELF)
    assert result["relative_l2_error"] <= baseline["relative_l2_error"] * 1.5


def test_restart_accepts_a_file_of_any_stage_and_no_other_n(tmp_path):
    keys = BOX + ["target.name=line_jump", "network.n=12", "train.grow_from=3", "train.growth=2"]
    short = config(keys + ["train.max_iter=3", f"output.path={tmp_path / 'run.h5'}"])
    train(build_problem(short), short, MPI.COMM_SELF)
    state = io.read_run(str(tmp_path / "run.h5"))
    assert state.network.n == 3
    io.check_same_problem(state, config(keys))  # n = 3 is the first stage of 3 -> 6 -> 12
    with pytest.raises(InputError, match=r"network.n \(3 in the file, 12 in the config\)"):
        io.check_same_problem(state, config([*keys[:-2], "network.n=12"]))
