"""The same training config gives the same trajectory on 1, 2, 3 and 4 ranks.

Launches ``mpiexec -n P python -m distgn train`` for P = 1..4 (the user's command) on a jump
target, where trajectories are most sensitive to rounding (pairs of neurons form at the jump), and
compares the relative L2 error after 50 iterations: equal to 1e-8 relative (with
``train.deterministic``, the default, they are equal to the bit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

MPIEXEC = shutil.which("mpiexec")
UNDER_MPIEXEC = "OMPI_COMM_WORLD_SIZE" in os.environ
ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMP_NUM_THREADS": "1",
}
CASES = {
    "1d-step": [
        'domain.kind="interval"',
        "domain.bounds=[0.0, 1.0]",
        'target.name="step"',
        "network.n=16",
    ],
    "2d-line-jump": [
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
        'target.name="line_jump"',
        "network.n=12",
    ],
    # Basin hopping: hops at iterations 23 and 38 (a fresh c-solve each), then the best iterate.
    "1d-power-hops": [
        'domain.kind="interval"',
        "domain.bounds=[0.0, 1.0]",
        'target.name="power"',
        "network.n=8",
        "train.tol=1e-6",
        "train.hops=2",
        "train.hop_tol=1e-3",
    ],
    # 2D basin hopping: hops at iterations 34, 40 and 46 (2D reseating places, 2D c-solves).
    "2d-line-jump-hops": [
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
        'target.name="line_jump"',
        "network.n=12",
        "train.tol=1e-3",
        "train.hops=3",
        "train.hop_tol=1e-2",
    ],
    # Staged growth 3 -> 6 -> 12: one growth within the 50 iterations, so the run ends with
    # the n = 6 stage.
    "2d-line-jump-growth": [
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
        'target.name="line_jump"',
        "network.n=12",
        "train.grow_from=3",
        "train.growth=2",
        "train.tol=1e-5",
        "train.hop_tol=1e-4",
    ],
}


def train_on(ranks: int, case: str, folder) -> dict:
    """``distgn train`` on ``ranks`` ranks for 50 iterations; the JSON result."""
    settings = [
        'solver.kind="dense"',
        "train.max_iter=50",
        "train.tol=0.0",
        f'output.path="{folder / f"{case}-{ranks}.h5"}"',
        *CASES[case],
    ]
    cmd = [
        MPIEXEC,
        "--oversubscribe",
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "distgn",
        "train",
        "--json",
    ]
    for setting in settings:
        cmd += ["--set", setting]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=150, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(UNDER_MPIEXEC or MPIEXEC is None, reason="launches its own mpiexec -n 1..4")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_trajectory_on_one_to_four_ranks(case, tmp_path):
    results = [train_on(ranks, case, tmp_path) for ranks in (1, 2, 3, 4)]
    serial = results[0]
    assert serial["iterations"] == 50 and serial["relative_l2_error"] < 0.5
    # Every hop of the case is done within the 50 iterations.
    hops = [int(s.split("=")[1]) for s in CASES[case] if s.startswith("train.hops=")]
    assert serial["hops"] == sum(hops)
    n = next(int(s.split("=")[1]) for s in CASES[case] if s.startswith("network.n="))
    assert serial["n"] == (6 if "growth" in case else n)  # cut by max_iter at n = 6
    for result in results[1:]:
        assert result["iterations"] == serial["iterations"]
        assert result["hops"] == serial["hops"]
        assert result["n"] == serial["n"]
        assert result["relative_l2_error"] == pytest.approx(serial["relative_l2_error"], rel=1e-8)
