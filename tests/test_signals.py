"""Faults a cluster job meets: SIGTERM/SIGUSR1/SIGINT (checkpoint, exit 75 or 130), a second
signal, SIGKILL at any moment including in the middle of a checkpoint write (the previous
checkpoint survives and a restart loses nothing beyond it), and a rank that raises (the job ends
within seconds). Every test runs the real ``distgn`` (under ``mpiexec -n 2`` where it says so)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    ENV,
    MPIEXEC,
    distgn_command,
    distgn_lines,
    needs_mpiexec,
    run_distgn,
)

from distgn import io

CONFIG = """\
[network]
n = 16
output_bias = true
[target]
name = "sine"
[solver]
kind = "dense"
[train]
method = "adam"
learning_rate = 0.01
max_iter = 1000000
tol = 0.0
[checkpoint]
"""

pytestmark = [needs_mpiexec, pytest.mark.timeout(300)]


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "run.toml"
    path.write_text(CONFIG + (extra or "every = 0\n"))
    return path


def default_sigint() -> None:
    """Give the child the default SIGINT: a test suite started in the background by a
    non-interactive shell ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(folder: Path, args: list[str], ranks: int) -> subprocess.Popen:
    return subprocess.Popen(
        distgn_command(args, ranks),
        cwd=folder,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )


def wait_for_iterations(proc: subprocess.Popen, count: int, deadline: float = 120) -> list[str]:
    """Read the progress lines until iteration ``count`` was logged."""
    seen = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if f"it {count:5d}" in line:
            return seen
    raise AssertionError(f"training did not reach iteration {count}: {''.join(seen)}")


def rank_pids(proc: subprocess.Popen) -> list[int]:
    """The processes mpiexec started (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize(
    "signum, ranks, to_ranks",
    [
        (signal.SIGUSR1, 2, False),  # mpiexec forwards SIGUSR1 to every rank
        (signal.SIGTERM, 2, True),  # what srun / SLURM does: the signal reaches every task
        (signal.SIGTERM, 0, True),
        (signal.SIGINT, 0, True),  # Ctrl-C of a serial run
    ],
)
def test_signal_checkpoints_and_exits_with_the_documented_status(tmp_path, signum, ranks, to_ranks):
    config = write_config(tmp_path)
    proc = start(tmp_path, ["train", str(config), "-o", "out.h5"], ranks)
    seen = wait_for_iterations(proc, 3)
    targets = ([proc.pid] if not ranks else rank_pids(proc)) if to_ranks else [proc.pid]
    sent = time.monotonic()
    for pid in targets:
        os.kill(pid, signum)
    _, rest = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20
    expected = 130 if signum == signal.SIGINT else 75
    assert proc.returncode == expected, "".join(seen) + rest
    name = signal.Signals(signum).name
    lines = distgn_lines(rest)
    assert lines == [
        f"distgn: interrupted by {name}: checkpoint written to out.ckpt.h5; "
        "continue with --restart out.ckpt.h5"
    ], rest
    assert "Traceback" not in rest
    state = io.read_run(str(tmp_path / "out.ckpt.h5"))
    assert state.attrs["finished"] == 0 and state.optimizer["iteration"] >= 3
    assert not (tmp_path / "out.h5").exists()  # the final result only when the run ends
    done = state.optimizer["iteration"]
    again = run_distgn(
        [
            "train",
            str(config),
            "-o",
            "out.h5",
            "--restart",
            "out.ckpt.h5",
            "--set",
            f"train.max_iter={done + 2}",
            "--json",
        ],
        tmp_path,
        ranks,
    )
    assert again.returncode == 0, again.stderr
    final = io.read_run(str(tmp_path / "out.h5"))
    assert final.result["total_iterations"] == done + 2 and final.result["iterations"] == 2
    summary = [line for line in again.stderr.splitlines() if "stopped (max_iter)" in line]
    assert len(summary) == 1 and "this run 2 iterations in" in summary[0]
    assert f"in all {done + 2} iterations" in summary[0]


def test_a_second_signal_exits_at_once(tmp_path):
    script = (
        "import os, signal, time\n"
        "from distgn import signals\n"
        "with signals.deferred():\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    time.sleep(0.1)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 20


def bits(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: np.asarray(v) for k, v in fh["network"].items()}


def test_sigkill_at_several_moments_loses_nothing_beyond_the_last_checkpoint(tmp_path):
    config = write_config(tmp_path, extra="every = 1\n")
    straight = run_distgn(
        [
            "train",
            str(config),
            "-o",
            "straight.h5",
            "--set",
            "train.max_iter=40",
            "--set",
            'checkpoint.path="straight.ckpt.h5"',
        ],
        tmp_path,
        ranks=0,
    )
    assert straight.returncode == 0, straight.stderr
    for moment in (3, 7, 12):
        proc = start(tmp_path, ["train", str(config), "-o", "killed.h5", "--force"], 0)
        wait_for_iterations(proc, moment)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        state = io.read_run(str(tmp_path / "killed.ckpt.h5"))  # verified: complete, intact
        assert state.optimizer["iteration"] >= moment - 1
        again = run_distgn(
            [
                "train",
                str(config),
                "-o",
                f"resumed{moment}.h5",
                "--restart",
                "killed.ckpt.h5",
                "--set",
                "train.max_iter=40",
            ],
            tmp_path,
            ranks=0,
        )
        assert again.returncode == 0, again.stderr
        expected, got = bits(tmp_path / "straight.h5"), bits(tmp_path / f"resumed{moment}.h5")
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


KILL_IN_WRITE = """
import os, signal, sys
from distgn import io, cli
where, after = sys.argv[1], int(sys.argv[2])
calls = [0]
original = getattr(io, where)
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] > after:
        if where == "write_network":
            original(*args, **kwargs)  # part of the file written
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(io, where, dying)
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where", ["write_network", "_add_checksums", "_commit"])
def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path, where):
    config = write_config(tmp_path, extra="every = 2\n")
    args = ["train", str(config), "-o", "out.h5", "--set", "train.max_iter=20"]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_WRITE, where, "2", *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    state = io.read_run(str(tmp_path / "out.ckpt.h5"))  # the second checkpoint, intact
    assert state.optimizer["iteration"] == 4
    assert io.read_run(str(tmp_path / "out.ckpt.h5.1")).optimizer["iteration"] == 2
    again = run_distgn([*args, "--restart", "out.ckpt.h5"], tmp_path, ranks=0)
    assert again.returncode == 0, again.stderr
    straight = run_distgn(
        [*args, "-o", "straight.h5", "--set", 'checkpoint.path="straight.ckpt.h5"'],
        tmp_path,
        ranks=0,
    )
    assert straight.returncode == 0, straight.stderr
    expected, got = bits(tmp_path / "straight.h5"), bits(tmp_path / "out.h5")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


RAISE_ON_RANK = """
import sys
from mpi4py import MPI
from distgn import cli
original = cli.assemble_block_rows
def failing(*args, **kwargs):
    if MPI.COMM_WORLD.rank == 2:
        raise RuntimeError("injected failure during assembly")
    return original(*args, **kwargs)
cli.assemble_block_rows = failing
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_raising_during_assembly_ends_the_job_within_seconds(tmp_path):
    started = time.monotonic()
    proc = subprocess.run(
        [
            MPIEXEC,
            "-n",
            "4",
            sys.executable,
            "-c",
            RAISE_ON_RANK,
            "assemble",
            "--set",
            "network.n=2000",
            "-o",
            "a.h5",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert distgn_lines(proc.stderr) == [
        "distgn: internal error on rank 2: RuntimeError: injected failure during assembly"
    ]
    assert not (tmp_path / "a.h5").exists()


def test_ctrl_c_outside_training_is_one_line_and_status_130(tmp_path):
    proc = start(tmp_path, ["analyze", "--sizes", "1024,2048,4096", "-o", "study.h5"], 0)
    assert "cond(A)" in proc.stdout.readline()  # the study is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130
    assert err == "distgn: interrupted by SIGINT (Ctrl-C)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
