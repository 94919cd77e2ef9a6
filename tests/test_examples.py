"""Every example config runs end to end through the real ``distgn`` under ``mpiexec -n 2``.

The examples are shrunk (fewer neurons and iterations) so that the suite stays fast; the point is
that each file is accepted as written and that its command gives a sensible result. A new example
without an entry in ``RUNS`` fails the test, so the list cannot silently fall behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MPIEXEC = shutil.which("mpiexec")
ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMP_NUM_THREADS": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}

# example -> [(subcommand, extra arguments)]: the shrinking overrides of each run.
RUNS = {
    "demo.toml": [("train", ["--set", "train.max_iter=3"]), ("analyze", ["--sizes", "64,128"])],
    "solve-1d.toml": [("solve", ["--set", "network.n=2048"])],
    "solve-2d.toml": [("solve", ["--set", "network.n=96"])],
    "train-1d.toml": [("train", ["--set", "train.max_iter=3"])],
    "train-2d.toml": [("train", ["--set", "network.n=24", "--set", "train.max_iter=2"])],
}


def test_every_example_has_a_run() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(RUNS)


def _run(example: str, command: str, extra: list[str], folder: Path) -> dict:
    out = folder / f"{Path(example).stem}.{command}.h5"
    argv = [command, str(EXAMPLES / example), *extra, "--set", f'output.path="{out}"', "--json"]
    if command == "analyze":
        argv += ["--set", f'analyze.plots="{folder / "plots"}"']
    proc = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "distgn", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=280,
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert out.is_file()
    with h5py.File(out, "r") as fh:
        assert len(fh.keys()) > 0
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    MPIEXEC is None or "OMPI_COMM_WORLD_SIZE" in os.environ, reason="launches its own mpiexec -n 2"
)
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "example, command, extra", [(e, c, x) for e, runs in RUNS.items() for c, x in runs]
)
def test_example_runs_end_to_end(
    tmp_path: Path, example: str, command: str, extra: list[str]
) -> None:
    result = _run(example, command, extra, tmp_path)
    assert result.get("ranks", 2) == 2
    if command == "solve":
        assert result["backward_error"] < 1e-6
        assert math.isfinite(result["fit_l2_error"]) and result["fit_l2_error"] > 0
    elif command == "train":
        assert result["iterations"] >= 1
        assert result["loss"] <= result["initial_loss"]
    elif command == "analyze":
        assert result["n"] == [64, 128]
        assert all(c > 1 for c in result["cond_A"])
