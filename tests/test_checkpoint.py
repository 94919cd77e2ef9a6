"""Checkpoints: exact restart of every method (bit-identical on the same number of ranks, 1e-10 on
another), the schema and its checks, keeping the last K, and atomic replacement."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from distgn import io
from distgn.config import load_config
from distgn.errors import InputError
from distgn.problem import build_problem
from distgn.training import train

CASES = [
    ("sggn", ["train.variant=alternating"]),
    ("sggn", ["train.variant=varpro"]),
    ("adam", ["train.learning_rate=0.01"]),
    ("bfgs", []),
    ("lm", []),
]
IDS = ["sggn-alternating", "sggn-varpro", "adam", "bfgs", "lm"]


def settings(folder, name: str, method: str, extra: list[str], dim: int = 1) -> list[str]:
    problem = (
        ["target.name=sine", "network.n=8", "network.output_bias=true"]
        if dim == 1
        else [
            'domain.kind="polygon"',
            "network.n=8",
            'target.name="line_jump"',
            "domain.vertices=[[0.0, 0.0], [2.0, 0.0], [2.5, 1.0], [1.0, 2.0], [-0.5, 1.0]]",
            'network.init="random"',
            "network.seed=2",
        ]
    )
    return [
        "solver.kind=dense",
        "train.tol=0.0",
        f"train.method={method}",
        f"output.path={folder / (name + '.h5')}",
        *problem,
        *extra,
    ]


def run(comm, keys: list[str], restart: io.RunState | None = None) -> dict:
    config = load_config(None, keys)
    return train(build_problem(config), config, comm, restart)


def network_arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        out = {f"network/{k}": np.asarray(v) for k, v in fh["network"].items()}
        out.update(
            {
                f"history/{k}": np.asarray(v)
                for k, v in fh["history"].items()
                if k not in ("seconds", "solver_seconds")
            }
        )
    return out


def assert_continued(comm, folder, method, extra, dim=1, total=6, split=3, other=None):
    """Straight run of ``total`` iterations on ``comm`` against a run checkpointed at ``split``
    and continued from the checkpoint on ``comm`` (bit for bit) and on ``other`` (1e-10)."""
    straight = settings(folder, "straight", method, extra + [f"train.max_iter={total}"], dim)
    run(comm, straight)
    first = settings(
        folder,
        "first",
        method,
        extra + [f"train.max_iter={total}", f"checkpoint.every={split}"],
        dim,
    )
    run(comm, first)
    checkpoint = str(folder / "first.ckpt.h5")
    state = io.read_run(checkpoint)
    assert state.attrs["kind"] == "checkpoint" and state.optimizer["iteration"] == split
    second = settings(folder, "second", method, extra + [f"train.max_iter={total}"], dim)
    result = run(comm, second, state)
    assert result["iterations"] == total - split and result["total_iterations"] == total
    expected, got = network_arrays(folder / "straight.h5"), network_arrays(folder / "second.h5")
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    if other is not None:
        third = settings(
            folder, f"third{comm.rank}", method, extra + [f"train.max_iter={total}"], dim
        )
        run(other, third, state)
        got = network_arrays(folder / f"third{comm.rank}.h5")
        for key in ("network/W", "network/b", "network/c", "history/loss"):
            scale = np.max(np.abs(expected[key]))
            np.testing.assert_allclose(
                got[key], expected[key], rtol=0, atol=1e-10 * scale, err_msg=key
            )


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("method, extra", CASES, ids=IDS)
def test_restart_is_bit_identical_on_the_same_ranks_and_close_on_others(
    comm, shared_tmp, method, extra
):
    assert_continued(
        comm, shared_tmp, method, extra, other=MPI.COMM_SELF if comm.size > 1 else None
    )


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_two_dimensional_sggn_restart_does_not_renormalise(comm, shared_tmp):
    assert_continued(comm, shared_tmp, "sggn", [], dim=2, total=4, split=2)


def test_checkpoint_schema_and_keep(tmp_path):
    keys = settings(
        tmp_path,
        "run",
        "adam",
        ["train.max_iter=7", "checkpoint.every=2", "checkpoint.keep=3", "train.learning_rate=0.01"],
    )
    result = run(MPI.COMM_SELF, keys)
    assert result["stop_reason"] == "max_iter"
    newest = io.read_run(str(tmp_path / "run.ckpt.h5"))
    assert newest.optimizer["iteration"] == 6 and newest.optimizer["k"] == 6
    assert {"theta", "first", "second"} <= set(newest.optimizer)
    assert io.read_run(str(tmp_path / "run.ckpt.h5.1")).optimizer["iteration"] == 4
    assert io.read_run(str(tmp_path / "run.ckpt.h5.2")).optimizer["iteration"] == 2
    assert not (tmp_path / "run.ckpt.h5.3").exists()
    final = io.read_run(str(tmp_path / "run.h5"))
    assert final.attrs["finished"] == 1 and final.result["stop_reason"] == "max_iter"
    with h5py.File(tmp_path / "run.h5", "r") as fh:
        for key in (
            "schema_version",
            "distgn_version",
            "subcommand",
            "config",
            "problem",
            "created",
            "ranks",
            "n",
            "d",
        ):
            assert key in fh.attrs, key
        assert fh.attrs["schema_version"] == io.SCHEMA_VERSION
        assert load_config_text(fh.attrs["config"]).train.method == "adam"
        for name in ("timings", "rng", "optimizer", "result"):
            assert len(fh[name].attrs) > 0
        seen = []
        fh.visititems(
            lambda name, obj: (
                seen.append((name, obj.attrs.get("sha256")))
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
        assert seen and all(digest for _, digest in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.ckpt.h5",
        "run.ckpt.h5.1",
        "run.ckpt.h5.2",
        "run.h5",
    ]  # no temporary left


def load_config_text(text: str):
    from distgn.config import loads

    return loads(text, "stored config")


def test_bfgs_state_is_a_real_inverse_hessian(tmp_path):
    keys = settings(tmp_path, "run", "bfgs", ["train.max_iter=5", "checkpoint.every=5"])
    run(MPI.COMM_SELF, keys)
    H = io.read_run(str(tmp_path / "run.h5")).optimizer["inverse_hessian"]
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-10 * np.max(np.abs(H)))
    assert np.min(np.linalg.eigvalsh(0.5 * (H + H.T))) > 0  # BFGS keeps H positive definite


def corrupt(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage":
        path.write_bytes(b"this is not HDF5\n" * 10)
    elif how == "flip":
        with h5py.File(path, "r+") as fh:
            fh["network/W"][0, 0] += 1.0
    elif how == "schema":
        with h5py.File(path, "r+") as fh:
            fh.attrs["schema_version"] = 1


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncate", "is truncated"),
        ("garbage", "is not an HDF5 file"),
        ("flip", "checksum of dataset network/W does not match"),
        ("schema", "has schema version 1"),
    ],
)
def test_damaged_files_are_refused_with_one_line(tmp_path, how, message):
    keys = settings(tmp_path, "run", "sggn", ["train.max_iter=2"])
    run(MPI.COMM_SELF, keys)
    path = tmp_path / "run.h5"
    corrupt(path, how)
    with pytest.raises(InputError, match=message) as info:
        io.read_run(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_restart_from_another_problem_is_refused(tmp_path):
    run(MPI.COMM_SELF, settings(tmp_path, "run", "sggn", ["train.max_iter=1"]))
    state = io.read_run(str(tmp_path / "run.h5"))
    for override, named in [
        ("network.n=12", "network.n (8 in the file, 12 in the config)"),
        ("target.name=step", "target.name"),
        ("domain.bounds=[0.0, 2.0]", "domain"),
    ]:
        config = load_config(None, settings(tmp_path, "run", "sggn", [override]))
        with pytest.raises(InputError, match=named.replace("(", r"\(").replace(")", r"\)")):
            io.check_same_problem(state, config)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    keys = settings(tmp_path, "run", "sggn", ["train.max_iter=1"])
    run(MPI.COMM_SELF, keys)
    before = (tmp_path / "run.h5").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_group", broken)
    with pytest.raises(OSError, match="disk full"):
        run(MPI.COMM_SELF, keys)
    assert (tmp_path / "run.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


# power, n = 8: the first hop comes at iteration 23, so a checkpoint at 27 is inside its basin.
HOPS = [
    "target.name=power",
    "network.output_bias=false",
    "train.tol=1e-6",
    "train.hops=2",
    "train.hop_tol=1e-3",
]
# The 2D case of ``settings`` (line_jump on a pentagon): hops at iterations 25 and 31.
HOPS_2D = ["train.tol=1e-3", "train.hops=2", "train.hop_tol=1e-2"]
# Staged growth to n = 8 (1D: 2 -> 4 -> 8, growths at iterations 1 and 28; 2D: 4 -> 8, at
# 28): the checkpoint holds the n = 4 stage, and the growth to n = 8 comes after the restart.
# (The 2D case starts at 4 neurons: a stage with fewer neurons than ranks is not bit-identical
# across rank counts.)
GROWTH = ["train.growth=2"]


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "dim, extra, total, split, event, rows",
    [
        (1, HOPS, 30, 27, "hop", [23]),
        (2, HOPS_2D, 34, 28, "hop", [25, 31]),
        (1, GROWTH + ["train.grow_from=2", "train.tol=1e-6"], 40, 20, "grow", [1, 28]),
        (
            2,
            GROWTH + ["train.grow_from=4", "train.tol=1e-3", "train.hop_tol=1e-2"],
            32,
            20,
            "grow",
            [28],
        ),
    ],
    ids=["hop-1d", "hop-2d", "growth-1d", "growth-2d"],
)
def test_restart_inside_a_hop_basin_or_a_growth_stage_is_bit_identical(
    comm, shared_tmp, dim, extra, total, split, event, rows
):
    assert_continued(
        comm,
        shared_tmp,
        "sggn",
        extra,
        dim=dim,
        total=total,
        split=split,
        other=MPI.COMM_SELF if comm.size > 1 else None,
    )
    saved = io.read_run(str(shared_tmp / "first.ckpt.h5"))
    if event == "hop":
        assert saved.optimizer["hops"] == 1
        assert saved.optimizer["best_W"].shape == (8, dim)
        first = np.asarray(saved.history["loss"])[: np.flatnonzero(saved.history["hop"] == 1)[0]]
        assert saved.optimizer["best_loss"] == first[-1]
    else:
        before = [row for row in rows if row <= split]
        assert saved.network.n == 4 and saved.optimizer["stage"] == len(before)
        assert saved.optimizer["basin"] == split - max(before, default=0)
    second = io.read_run(str(shared_tmp / "second.h5"))
    assert second.network.n == 8
    assert np.flatnonzero(second.history[event] == 1).tolist() == rows
