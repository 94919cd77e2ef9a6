"""The command line: JSON results, the matrix study, inspection, and what users see on bad input."""

from __future__ import annotations

import json
import os
import resource

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from distgn import cli
from distgn.cli import main
from distgn.errors import InputError


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_analyze_reproduces_growth_exponents(comm, shared_tmp, capsys):
    out = str(shared_tmp / "study.h5")
    status = main(
        ["analyze", "--sizes", "128,256,512", "--set", "analyze.leaf_size=32", "-o", out, "--json"]
    )
    assert status == 0
    largest = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, MPI.MAX)
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
        # the largest rank's peak when the result was made: below the peak now, not far below
        assert largest / 2 <= result["peak_memory_bytes"] <= largest
        assert result["plots"] == [str(shared_tmp / "study.png")]  # next to the output
        assert os.path.exists(result["plots"][0])
        with h5py.File(out, "r") as fh:
            np.testing.assert_allclose(fh["cond_A"][...], result["cond_A"])


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_train_json_reports_peak_memory_and_bytes_sent(comm, shared_tmp, capsys):
    sets = ["network.n=8", "train.max_iter=2", 'solver.kind="dense"']
    argv = ["train", "-o", str(shared_tmp / "run.h5"), "--json"]
    assert main(argv + [a for item in sets for a in ("--set", item)]) == 0
    largest = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, MPI.MAX)
    if comm.rank == 0:
        result = last_json(capsys.readouterr().out)
        # the largest rank's peak when the result was made: below the peak now, not far below
        assert largest / 2 <= result["peak_memory_bytes"] <= largest
        # bytes handed to MPI by the run, counted at the communicator
        assert 0 < result["comm_bytes_max"] <= result["comm_bytes_total"]
        assert result["comm_bytes_total"] <= comm.size * result["comm_bytes_max"]


def test_inspect_shows_the_group_tree_with_attributes(tmp_path, capsys):
    path = str(tmp_path / "run.h5")
    assert (
        main(
            [
                "train",
                "--set",
                "network.n=8",
                "--set",
                "train.max_iter=2",
                "--set",
                'solver.kind="dense"',
                "-o",
                path,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["inspect", path, "--json"]) == 0
    tree = last_json(capsys.readouterr().out)
    assert tree["attrs"]["subcommand"] == "train" and tree["attrs"]["schema_version"] == 2
    assert tree["groups"]["network"]["datasets"]["W"]["shape"] == [8, 1]
    assert tree["groups"]["network"]["datasets"]["W"]["checksum"] == "ok"
    assert tree["groups"]["result"]["attrs"]["stop_reason"] == "max_iter"
    assert "stop_reason" not in tree["attrs"]  # root and result attributes are not mixed
    assert main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "  result/\n" in text and "@stop_reason = max_iter" in text


def test_every_file_describes_itself_and_has_no_empty_group(tmp_path):
    common = ["--set", "network.n=8", "--set", 'solver.kind="dense"']
    outputs = {
        "train": ["--set", "train.max_iter=1"],
        "solve": [],
        "assemble": ["--matrices", "A"],
        "analyze": ["--sizes", "16,32"],
    }
    for command, extra in outputs.items():
        path = tmp_path / f"x.{command}.h5"
        assert main([command, *common, *extra, "-o", str(path)]) == 0, command
        with h5py.File(path, "r") as fh:
            for key in (
                "schema_version",
                "distgn_version",
                "config",
                "subcommand",
                "created",
                "problem",
                "ranks",
            ):
                assert key in fh.attrs, (command, key)
            assert fh.attrs["subcommand"] == command
            names: list[str] = []
            fh.visit(names.append)
            for name in names:
                if isinstance(fh[name], h5py.Group):
                    assert len(fh[name]) or len(fh[name].attrs), (command, name)
    assert (tmp_path / "x.analyze.png").exists()  # plots next to the output


@pytest.mark.parametrize(
    "argv, config, petsc",
    [
        (["solve", "-distgn_ksp_type", "nonsense"], None, ["-distgn_ksp_type", "nonsense"]),
        (["solve", "-log_view", "run.toml", "--json"], "run.toml", ["-log_view"]),
        (
            ["solve", "run.toml", "-distgn_ksp_rtol", "-1", "-log_view", "-distgn_ksp_monitor"],
            "run.toml",
            ["-distgn_ksp_rtol", "-1", "-log_view", "-distgn_ksp_monitor"],
        ),
        (["solve", "-v", "--set", "network.n=8"], None, []),
    ],
)
def test_petsc_options_are_split_from_distgn_arguments(argv, config, petsc):
    args, options = cli.parse(argv)
    assert args.config == config and options == petsc


@pytest.mark.parametrize(
    "argv, message",
    [
        (["solve", "-json"], "option -json has one dash: did you mean --json?"),
        (["train", "-restart", "x.h5"], "option -restart has one dash"),
    ],
)
def test_single_dash_long_options_are_refused(argv, message):
    with pytest.raises(InputError, match=message):
        cli.parse(argv)


@pytest.mark.parametrize(
    "options, message",
    [
        (["-distgn_kspp_type", "cg"], "unknown option -distgn_kspp_type"),
        (["-log_veiw"], "did you mean -log_view"),
    ],
)
def test_unknown_petsc_options_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        cli.check_petsc_options(options)
    cli.check_petsc_options(
        [
            "-distgn_ksp_type",
            "minres",
            "-distgn_pc_type",
            "jacobi",
            "-log_view",
            "-distgn_ksp_monitor",
        ]
    )


def test_outputs_of_subcommands_do_not_collide_and_force_replaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "case.toml"
    config.write_text(
        '[network]\nn = 8\n[solver]\nkind = "dense"\n[train]\nmax_iter = 1\n'
        "[analyze]\nsizes = [16, 32]\n"
    )
    for command in ("train", "solve", "analyze", "assemble"):
        assert main([command, str(config)]) == 0, command
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "case.analyze.h5",
        "case.analyze.png",
        "case.assemble.h5",
        "case.solve.h5",
        "case.toml",
        "case.train.h5",
    ]
    assert main(["train", str(config), "-o", "case.solve.h5"]) == 2  # another subcommand's file
    assert main(["train", str(config), "-o", "case.solve.h5", "--force"]) == 0
    with h5py.File(tmp_path / "case.solve.h5", "r") as fh:
        assert fh.attrs["subcommand"] == "train"
    assert main(["train", str(config)]) == 0  # the same subcommand and problem: replaced
