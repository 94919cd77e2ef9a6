"""The command line: JSON results, the matrix study, inspection, and what users see on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from distgn import cli, io
from distgn.cli import main
from distgn.network import Network

MPIEXEC = shutil.which("mpiexec")
UNDER_MPIEXEC = "OMPI_COMM_WORLD_SIZE" in os.environ
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMP_NUM_THREADS": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_analyze_reproduces_growth_exponents(comm, shared_tmp, capsys):
    out = str(shared_tmp / "study.h5")
    status = main(["analyze", "--sizes", "128,256,512", "--set", "analyze.leaf_size=32",
                   "--set", f'analyze.plots="{shared_tmp / "study"}"', "-o", out, "--json"])
    assert status == 0
    if comm.rank == 0:
        result = last_json(capsys.readouterr().out)
        assert result["exponent_A"] == pytest.approx(4.0, abs=0.1)
        assert result["exponent_H"] == pytest.approx(2.0, abs=0.05)
        assert result["exponent_G"] == pytest.approx(4.0, abs=0.1)
        # MEASURED: cond(A) = 3.96 n^4 for n >= 256 (uniform, one orientation).
        assert result["cond_A"][-1] == pytest.approx(3.96 * 512**4, rel=0.05)
        # 1D one orientation: HSS block rows of A, H, G have ranks 4, 2, 4 at every level.
        for name, rank in [("A", 4), ("H", 2), ("G", 4)]:
            assert max(max(r) for r in result[f"hss_ranks_{name}"]["1e-12"]) == rank
        assert os.path.exists(result["plots"][0])
        with h5py.File(out, "r") as fh:
            np.testing.assert_allclose(fh["cond_A"][...], result["cond_A"])


def test_inspect_and_state_round_trip(tmp_path, comm, capsys):
    path = str(tmp_path / "state.h5")
    net = Network(np.array([[1.0], [-1.0]]), np.array([-0.2, 0.6]), np.array([1.0, 2.0]), 0.5)
    io.save_state(path, comm, net, {"loss": [1.0, 0.5]}, {"iterations": 2}, {"a": 1})
    loaded, history, result = io.load_state(path)
    np.testing.assert_array_equal(loaded.c, net.c)
    assert loaded.c0 == 0.5 and list(history["loss"]) == [1.0, 0.5] and result["iterations"] == 2
    assert main(["inspect", path, "--json"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["datasets"]["network/W"] == [2, 1]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, comm, monkeypatch):
    path = str(tmp_path / "state.h5")
    net = Network(np.array([[1.0]]), np.array([-0.2]), np.array([1.0]))
    io.save_state(path, comm, net, {}, {"iterations": 1}, {})
    before = open(path, "rb").read()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_group", broken)
    with pytest.raises(OSError):
        io.save_state(path, comm, net, {"loss": [1.0]}, {"iterations": 2}, {})
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("argv, config, petsc", [
    (["solve", "-distgn_ksp_type", "nonsense"], None, ["-distgn_ksp_type", "nonsense"]),
    (["solve", "-log_view", "run.toml", "--json"], "run.toml", ["-log_view"]),
    (["solve", "run.toml", "-distgn_ksp_rtol", "-1", "-log_view", "-distgn_ksp_monitor"],
     "run.toml", ["-distgn_ksp_rtol", "-1", "-log_view", "-distgn_ksp_monitor"]),
    (["solve", "-v", "--set", "network.n=8"], None, []),
])
def test_petsc_options_are_split_from_distgn_arguments(argv, config, petsc):
    args, options = cli.parse(argv)
    assert args.config == config and options == petsc


BAD_INPUT = [
    (["assemble", "--set", "network.n=3"], "network.n = 3 is smaller than the number of ranks 4"),
    (["assemble", "--set", "network.m=3"], "unknown config key network.m"),
    (["assemble", "--set", "network.init=\"file\"", "--set", "network.file=\"/none.h5\""],
     "network.file = '/none.h5' cannot be read"),
    (["solve", "--set", "solver.kind=\"magic\""], "solver.kind = 'magic' is not one of"),
    (["assemble", "--bogus"], "unrecognized arguments: --bogus"),
    (["solve", "--set", "solver.kind=\"krylov\"", "-distgn_ksp_type", "nonsense"],
     "-distgn_ksp_type 'nonsense' is not a KSP type"),
    (["inspect", "/none.h5"], "inspect: '/none.h5' does not exist"),
]


@pytest.mark.skipif(UNDER_MPIEXEC or MPIEXEC is None, reason="launches its own mpiexec -n 4")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_one_line_nonzero_exit_on_four_ranks(tmp_path, argv, message):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    cmd = [MPIEXEC, "-n", "4", sys.executable, "-m", "distgn", *argv]
    if argv[0] != "inspect":
        cmd += ["--set", f'output.path="{out}"']
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("distgn")]
    assert lines == [f"distgn: error: {lines[0].split('error: ', 1)[1]}"] and message in lines[0]
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"precious"
