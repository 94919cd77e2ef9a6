"""The bad-input campaign: malformed configs, options, paths and files given to the real
``distgn`` under ``mpiexec -n 2``. Each gives exactly one line ``distgn: error: ...`` naming the
bad thing, exit status 2 on every rank, no traceback, no MPI_Abort banner, no hang, and leaves an
existing checkpoint byte for byte as it was."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import pytest
from conftest import DISTGN, ENV, MPIEXEC, distgn_lines, needs_mpiexec, run_distgn

from distgn.cli import main

BASE = """\
[network]
n = 8
[target]
name = "sine"
[solver]
kind = "dense"
[train]
max_iter = 2
[checkpoint]
path = "keep.ckpt.h5"
"""

# (arguments, expected text of the one error line). "CFG" is the base config file.
CASES = [
    # numbers out of range, one key named
    (["train", "CFG", "--set", "network.n=0"], "config key network.n = 0 must be >= 1"),
    (["train", "CFG", "--set", "network.n=-5"], "network.n = -5 must be >= 1"),
    (["solve", "CFG", "--set", "solver.tol=-1"], "solver.tol = -1.0 must be in (0.0, 1.0)"),
    (["solve", "CFG", "--set", "solver.tol=2.0"], "solver.tol = 2.0 must be in (0.0, 1.0)"),
    (["solve", "CFG", "--set", "solver.tol=0"], "solver.tol = 0.0 must be in (0.0, 1.0)"),
    (["solve", "CFG", "--set", "solver.rtol=1.5"], "solver.rtol = 1.5 must be in (0.0, 1.0)"),
    (["solve", "CFG", "--set", "solver.tol=nan"], "solver.tol = nan must be finite"),
    (["train", "CFG", "--set", "train.max_iter=-1"], "train.max_iter = -1 must be >= 0"),
    (["train", "CFG", "--set", "train.max_seconds=0"], "train.max_seconds = 0.0 must be > 0.0"),
    (["train", "CFG", "--set", "train.tol=-1e-3"], "train.tol = -0.001 must be >= 0.0"),
    (["train", "CFG", "--set", "train.patience=0"], "train.patience = 0 must be >= 1"),
    (["train", "CFG", "--set", "train.learning_rate=0"], "train.learning_rate = 0.0 must be >"),
    (["train", "CFG", "--set", "train.lr_decay=1.5"], "train.lr_decay = 1.5 must be in (0.0, 1.0]"),
    (["train", "CFG", "--set", "checkpoint.every=-1"], "checkpoint.every = -1 must be >= 0"),
    (["train", "CFG", "--set", "checkpoint.keep=0"], "checkpoint.keep = 0 must be >= 1"),
    (["train", "CFG", "--set", "checkpoint.seconds=-5"], "checkpoint.seconds = -5.0 must be"),
    (["solve", "CFG", "--set", "solver.leaf_size=0"], "solver.leaf_size = 0 must be >= 1"),
    (
        ["solve", "CFG", "--set", "solver.regularization=-1e-6"],
        "solver.regularization = -1e-06 must be in [0.0, 1.0)",
    ),
    (
        ["solve", "CFG", "--set", "solver.regularization=1e-6"],
        "solver.regularization = 1e-06 applies to the neuron basis only",
    ),
    (["analyze", "CFG", "--set", "analyze.sizes=[]"], "analyze.sizes = [] must not be empty"),
    (
        ["analyze", "CFG", "--set", "analyze.tolerances=[0.0]"],
        "analyze.tolerances = [0.0] must be in (0.0, 1.0)",
    ),
    (
        ["solve", "CFG", "--set", "domain.bounds=[1.0, 0.0]"],
        "domain.bounds = [1.0, 0.0] is not ordered",
    ),
    (["solve", "CFG", "--set", "domain.bounds=[0.0, inf]"], "domain.bounds = [0.0, inf] must be"),
    # names, types and choices
    (["train", "CFG", "--set", 'train.method="sgd"'], "train.method = 'sgd' is not one of"),
    (["train", "CFG", "--set", "train.growth=1"], "train.growth = 1 must be >= 2"),
    (["train", "CFG", "--set", "train.grow_spread=0"], "train.grow_spread = 0.0 must be > 0.0"),
    (
        ["train", "CFG", "--set", "train.grow_from=2", "--set", 'train.method="adam"'],
        "train.grow_from = 2: staged growth needs train.method = sggn",
    ),
    (["solve", "CFG", "--set", 'solver.kind="magic"'], "solver.kind = 'magic' is not one of"),
    (["solve", "CFG", "--set", "network.m=3"], "unknown config key network.m"),
    (["solve", "CFG", "--set", "netw.n=3"], "unknown config section [netw]"),
    (["solve", "CFG", "--set", "network.n=abc"], "network.n = 'abc' must be of type int"),
    (["solve", "CFG", "--set", "network.output_bias=1"], "network.output_bias = 1 must be true"),
    (
        ["train", "CFG", "--set", "train.checkpoint_every=5", "--set", "checkpoint.every=3"],
        "train.checkpoint_every = 5 and checkpoint.every = 3 disagree",
    ),
    (["solve", "BADTOML"], "is not valid TOML"),
    (["solve", "missing.toml"], "config file 'missing.toml' does not exist"),
    (
        [
            "solve",
            "CFG",
            "--set",
            "network",
        ],
        "--set 'network' must look like section.key=value",
    ),
    # output paths, checked before the work
    (["train", "CFG", "-o", "folder"], "-o 'folder' is a folder, not a file"),
    (["solve", "CFG", "-o", "/nonexistent/x.h5"], "folder '/nonexistent' does not exist"),
    (["train", "CFG", "-o", "/proc/out.h5"], "cannot write in folder '/proc'"),
    (["train", "CFG", "-o", "analysis.h5"], "-o 'analysis.h5' was written by 'distgn analyze'"),
    (["train", "CFG", "-o", "precious.h5"], "-o 'precious.h5' exists and is not a distgn file"),
    (["train", "CFG", "-o", "other.h5"], "-o 'other.h5' holds another problem"),
    (["train", "CFG", "-o", "keep.ckpt.h5"], "checkpoint.path = 'keep.ckpt.h5' is the output"),
    (["train", "CFG", "--set", 'output.path="folder"'], "output.path = 'folder' is a folder"),
    # options
    (["solve", "CFG", "-json"], "option -json has one dash: did you mean --json?"),
    (["solve", "CFG", "-distgn_kspp_type", "cg"], "unknown option -distgn_kspp_type"),
    (
        ["solve", "CFG", "--set", 'solver.petsc_options="-distgn_kps_type cg"'],
        "unknown option -distgn_kps_type in solver.petsc_options",
    ),
    (["solve", "CFG", "--bogus"], "unrecognized arguments: --bogus"),
    (["trian", "CFG"], "argument command: invalid choice: 'trian'"),
    (["assemble", "CFG", "--matrices", "A,X"], "--matrices 'A,X': X not in A, H, G"),
    (["analyze", "CFG", "--sizes", "64,x"], "--sizes '64,x' must be comma-separated integers"),
    # restart files
    (["train", "CFG", "--restart", "garbage.h5"], "--restart file 'garbage.h5' is not an HDF5"),
    (["train", "CFG", "--restart", "truncated.h5"], "--restart file 'truncated.h5' is truncated"),
    (
        ["train", "CFG", "--restart", "flipped.h5"],
        "--restart file 'flipped.h5': checksum of dataset network/W does not match",
    ),
    (["train", "CFG", "--restart", "old.h5"], "--restart file 'old.h5' has schema version 1"),
    (["train", "CFG", "--restart", "nothing.h5"], "--restart file 'nothing.h5' does not exist"),
    (
        ["train", "CFG", "--restart", "keep.ckpt.h5", "--set", "network.n=12"],
        "--restart file 'keep.ckpt.h5' is for another problem: network.n (8 in the file, 12 in "
        "the config)",
    ),
    (
        ["train", "CFG", "--restart", "keep.ckpt.h5", "--set", 'target.name="step"'],
        "is for another problem: target.name",
    ),
    (
        ["train", "CFG", "--restart", "analysis.h5"],
        "--restart file 'analysis.h5' was written by 'distgn analyze', not by 'distgn train'",
    ),
    (
        ["train", "CFG", "--set", 'network.init="file"', "--set", 'network.file="/none.h5"'],
        "network.file = '/none.h5' cannot be read",
    ),
    # inspect
    (["inspect", "nothing.h5"], "inspect: 'nothing.h5' does not exist"),
    (["inspect", "folder"], "inspect: 'folder' is a folder, not a file"),
    (["inspect", "garbage.h5"], "inspect: 'garbage.h5' is not an HDF5 file"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the base config, a valid checkpoint and the malformed files."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    (folder / "base.toml").write_text(BASE)
    (folder / "bad.toml").write_text("[network\nn = 3")
    (folder / "folder").mkdir()
    (folder / "precious.h5").write_bytes(b"precious")
    (folder / "garbage.h5").write_bytes(b"this is not HDF5\n" * 10)
    cfg = str(folder / "base.toml")
    assert (
        main(
            [
                "train",
                cfg,
                "-o",
                str(folder / "run.h5"),
                "--set",
                "checkpoint.every=1",
                "--set",
                f'checkpoint.path="{folder / "keep.ckpt.h5"}"',
            ]
        )
        == 0
    )
    assert main(["analyze", cfg, "--sizes", "16,32", "-o", str(folder / "analysis.h5")]) == 0
    assert (
        main(
            [
                "train",
                cfg,
                "--set",
                'target.name="step"',
                "-o",
                str(folder / "other.h5"),
                "--set",
                f'checkpoint.path="{folder / "other.ckpt.h5"}"',
            ]
        )
        == 0
    )
    good = (folder / "run.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(good[: len(good) // 2])
    for name in ("flipped.h5", "old.h5"):
        shutil.copy(folder / "run.h5", folder / name)
    with h5py.File(folder / "flipped.h5", "r+") as fh:
        fh["network/W"][0, 0] += 1.0
    with h5py.File(folder / "old.h5", "r+") as fh:
        fh.attrs["schema_version"] = 1
    return folder


@needs_mpiexec
@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input_gives_one_line_and_status_two_on_every_rank(workspace, argv, message):
    argv = [{"CFG": "base.toml", "BADTOML": "bad.toml"}.get(a, a) for a in argv]
    before = (workspace / "keep.ckpt.h5").read_bytes()
    proc = run_distgn(argv, workspace, ranks=2, timeout=90)
    assert proc.returncode == 2, proc.stderr
    lines = distgn_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("distgn: error: "), proc.stderr
    assert message in lines[0], lines[0]
    assert not lines[0].startswith("distgn: error: distgn")
    for noise in ("Traceback", "MPI_ABORT", "ORTE_ERROR_LOG"):
        assert noise not in proc.stderr
    assert proc.stdout == ""
    assert (workspace / "keep.ckpt.h5").read_bytes() == before


def test_the_campaign_is_large_enough():
    assert len(CASES) >= 40


@needs_mpiexec
@pytest.mark.timeout(120)
def test_with_a_quiet_mpiexec_stderr_is_exactly_one_line(workspace):
    before = (workspace / "keep.ckpt.h5").read_bytes()
    proc = subprocess.run(
        [MPIEXEC, "-q", "-n", "2", DISTGN, "train", "base.toml", "--set", "solver.tol=2.0"],
        cwd=workspace,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 2
    assert proc.stderr == "distgn: error: config key solver.tol = 2.0 must be in (0.0, 1.0)\n"
    assert (workspace / "keep.ckpt.h5").read_bytes() == before
