"""The batch scripts in slurm/, submitted to a real single-node SLURM cluster.

Skipped, with the reason, only where the cluster cannot run (slurm-wlm/munge missing, not root,
another slurmctld on the machine). Every job runs in a temporary folder; every wait has a timeout.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from slurm_cluster import LocalSlurm, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
DEMO = REPO / "examples" / "demo.toml"
# Jobs run as root here: Open MPI needs these to start (the scripts themselves do not set them).
JOB_ENV = {
    "DISTGN_ENV": sys.prefix,
    "DISTGN_SRC": str(REPO),
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMP_NUM_THREADS": "1",
}
JOB_TIMEOUT = 240
# Files that belong to the environment, not to the tests (as the Makefile's clean-tree check).
ENVIRONMENT_FILES = r"\.venv/|\.ruff_cache/|(.*/)?__pycache__/|.*\.egg-info/"

pytestmark = pytest.mark.timeout(900)


def source_tree() -> set[str]:
    """Untracked and ignored files of the checkout, the environment's and caches aside."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    return {
        line
        for line in out.splitlines()
        if line[:2] in ("??", "!!") and not re.match(ENVIRONMENT_FILES, line[3:].strip('"'))
    }


@pytest.fixture(scope="session")
def tree_before() -> set[str]:
    """The source tree's untracked files before any job ran."""
    return source_tree()


@pytest.fixture(scope="session")
def cluster(tree_before: set[str]):
    """A 4-CPU single-node cluster for the whole session; always stopped and removed."""
    reason = unavailable_reason()
    if reason:
        warnings.warn(f"SLURM tests skipped: {reason}", stacklevel=1)  # shown in any summary
        pytest.skip(reason)
    slurm = LocalSlurm(cpus=4)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        slurm.remove()


@pytest.fixture
def workdir(cluster: LocalSlurm, tmp_path: Path) -> Path:
    """A job folder; afterwards the queue must be empty again."""
    yield tmp_path
    cluster.wait_idle(JOB_TIMEOUT)


def submit(
    cluster: LocalSlurm,
    argv: list[str],
    workdir: Path,
    timeout: float = JOB_TIMEOUT,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run a submitting command (sbatch or a slurm/*.sh) in ``workdir`` with the job environment."""
    return cluster.run(
        argv, timeout=timeout, check=False, cwd=workdir, env={**JOB_ENV, **(env or {})}
    )


def last_json(path: Path) -> dict:
    """The last JSON line of a job's output."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    assert lines, f"no JSON result in {path}:\n{path.read_text()}"
    return json.loads(lines[-1])


def wait_for_jobs(cluster: LocalSlurm, jobs: list[str], timeout: float = JOB_TIMEOUT) -> list[dict]:
    """Wait until the queue is empty; return ``scontrol show job`` of each job."""
    cluster.wait_idle(timeout)
    return [cluster.job_info(job) for job in jobs]


def test_run_sbatch_detects_launcher_and_honours_override(cluster, workdir):
    solve = ["solve", str(DEMO), "--set", "network.n=64", "--json"]
    done = submit(
        cluster,
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "-o",
            "detect.out",
            "-e",
            "detect.err",
            str(SLURM / "run.sbatch"),
            *solve,
            "--set",
            'output.path="detect.h5"',
        ],
        workdir,
    )
    assert done.returncode == 0, (workdir / "detect.err").read_text()
    assert last_json(workdir / "detect.out")["ranks"] == 2
    # Debian's Open MPI has no SLURM PMI support: the srun probe fails, mpiexec is chosen.
    assert "launching with: mpiexec -n 2 distgn solve" in (workdir / "detect.err").read_text()
    override = submit(
        cluster,
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "-o",
            "one.out",
            "-e",
            "one.err",
            str(SLURM / "run.sbatch"),
            *solve,
            "--set",
            'output.path="one.h5"',
        ],
        workdir,
        env={"DISTGN_LAUNCH": "mpiexec -n 1"},
    )
    assert override.returncode == 0, (workdir / "one.err").read_text()
    assert last_json(workdir / "one.out")["ranks"] == 1
    assert "launching with: mpiexec -n 1 distgn" in (workdir / "one.err").read_text()


def test_failing_run_fails_the_job(cluster, workdir):
    done = submit(
        cluster,
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "-o",
            "bad.out",
            "-e",
            "bad.err",
            str(SLURM / "run.sbatch"),
            "solve",
            str(DEMO),
            "--set",
            "solver.kind=nonsense",
        ],
        workdir,
    )
    assert done.returncode == 2
    assert "solver.kind" in (workdir / "bad.err").read_text()


def test_sweep_array_and_collector(cluster, workdir):
    env = {"DISTGN_SWEEP": "network.n=32,64 solver.kind=hss,dense", "DISTGN_RESULTS": "res"}
    done = submit(
        cluster,
        [
            str(SLURM / "sweep.sh"),
            "--wait",
            "--ntasks=2",
            "--output=sweep-%A_%a.out",
            "--",
            "solve",
            str(DEMO),
            "--json",
        ],
        workdir,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    outputs = sorted(workdir.glob("sweep-*_*.out"))
    assert len(outputs) == 4
    collected = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "collect.py"),
            *map(str, outputs),
            "-o",
            str(workdir / "table"),
            "--sort",
            "network.n,solver.kind",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    rows = json.loads((workdir / "table.json").read_text())
    assert [(r["network.n"], r["solver.kind"]) for r in rows] == [
        ("32", "dense"),
        ("32", "hss"),
        ("64", "dense"),
        ("64", "hss"),
    ]
    for row in rows:
        assert row["n"] == int(row["network.n"]) and row["solver"] == row["solver.kind"]
        assert row["ranks"] == 2 and row["backward_error"] < 1e-10
        assert row["peak_memory_bytes"] > 0
    assert all(isinstance(r["bytes_sent"], int) for r in rows if r["solver"] == "hss")
    assert all(r["bytes_sent"] == "missing" for r in rows if r["solver"] == "dense")
    assert all(isinstance(r["bytes_sent_per_rank"], int) for r in rows)  # every solver
    assert len(list((workdir / "res").glob("sweep-*.h5"))) == 4
    header = (workdir / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["network.n", "solver.kind"] and "peak_memory_bytes" in header


def test_scaling_submitters_one_job_per_rank_count(cluster, workdir):
    env = {"DISTGN_RESULTS": "res"}
    strong = submit(
        cluster,
        [str(SLURM / "scaling.sh"), "strong", str(DEMO), "1 2 4", "--", "--set", "network.n=128"],
        workdir,
        env=env,
    )
    assert strong.returncode == 0, strong.stderr
    weak = submit(
        cluster, [str(SLURM / "scaling.sh"), "weak", str(DEMO), "1 4", "64", "n2"], workdir, env=env
    )
    assert weak.returncode == 0, weak.stderr
    jobs = [line.split()[0] for line in (strong.stdout + weak.stdout).splitlines()]
    infos = wait_for_jobs(cluster, jobs)
    assert [info["JobState"] for info in infos] == ["COMPLETED"] * 5
    assert [int(info["NumTasks"]) for info in infos] == [1, 2, 4, 1, 4]
    results = {
        p.name.split("-")[0] + p.name.split("-")[1]: last_json(p)
        for p in (workdir / "res").glob("*.out")
    }
    assert {k: (v["ranks"], v["n"]) for k, v in results.items()} == {
        "strongP1": (1, 128),
        "strongP2": (2, 128),
        "strongP4": (4, 128),
        "weakP1": (1, 64),
        "weakP4": (4, round(64 * math.sqrt(4))),
    }
    for p in (workdir / "res").glob("weak-*.out"):
        p.unlink()
    study = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "study.py"),
            "strong",
            str(DEMO),
            "--from",
            str(workdir / "res"),
            "-o",
            str(workdir / "strong"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert study.returncode == 0, study.stderr
    table = json.loads((workdir / "strong.json").read_text())
    assert [(r["ranks"], r["n"]) for r in table] == [(1, 128), (2, 128), (4, 128)]
    assert all(r["peak_memory_bytes"] > 0 for r in table)
    assert (workdir / "strong.png").stat().st_size > 0


def wait_for_job(cluster: LocalSlurm, job: str, timeout: float) -> tuple[str, str]:
    """(JobState, ExitCode) of ``job`` once it has ended."""
    deadline = time.monotonic() + timeout
    while (info := cluster.job_info(job))["JobState"] in ("PENDING", "RUNNING", "COMPLETING"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} still {info['JobState']} after {timeout:.0f} s")
        time.sleep(2)
    return info["JobState"], info["ExitCode"]


def chain_states(
    cluster: LocalSlurm, jobs: list[str], timeout: float = JOB_TIMEOUT
) -> list[tuple[str, str]]:
    """(JobState, ExitCode) of each job once the queue is empty."""
    return [(info["JobState"], info["ExitCode"]) for info in wait_for_jobs(cluster, jobs, timeout)]


def test_chain_cancels_pending_links_once_finished(cluster, workdir):
    chain = submit(
        cluster,
        [
            str(SLURM / "restart_chain.sh"),
            "3",
            str(DEMO),
            "--ntasks=2",
            "--output=link-%j.out",
            "--",
            "--set",
            "train.max_iter=3",
            "--set",
            'output.path="short.h5"',
        ],
        workdir,
    )
    assert chain.returncode == 0, chain.stderr
    jobs = chain.stdout.split()
    assert len(jobs) == 3
    states = chain_states(cluster, jobs)
    assert states[0] == ("COMPLETED", "0:0")
    assert [s[0] for s in states[1:]] == ["CANCELLED", "CANCELLED"]
    with h5py.File(workdir / "short.h5", "r") as fh:
        assert len(fh["history/loss"]) == 4  # the start and 3 iterations


# About 70 s of training on 2 ranks here (n = 2048 costs ~0.4 s per SgGN iteration), longer than
# any link can run before its signal: SIGUSR1 comes at the first time-limit check (SLURM checks
# every 30 s) once at most 50 s of the 1-minute limit are left, i.e. 10-40 s into a link.
PREEMPT = [
    "--set",
    "network.n=2048",
    "--set",
    "train.max_iter=180",
    "--set",
    "train.tol=0.0",
    "--set",
    "checkpoint.every=5",
]


@pytest.mark.timeout(3600)
def test_signalled_link_checkpoints_and_next_link_finishes_identically(cluster, workdir):
    reference = submit(
        cluster,
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "-o",
            "ref.out",
            "-e",
            "ref.err",
            str(SLURM / "run.sbatch"),
            "train",
            str(DEMO),
            *PREEMPT,
            "--set",
            'output.path="reference.h5"',
        ],
        workdir,
        timeout=1800,
    )
    assert reference.returncode == 0, (workdir / "ref.err").read_text()
    # Each link runs 10-40 s (minus start-up) before its signal; on a loaded machine the run takes
    # several minutes, hence many links (those not needed are cancelled).
    chain = submit(
        cluster,
        [
            str(SLURM / "restart_chain.sh"),
            "24",
            str(DEMO),
            "--ntasks=2",
            "--time=1",
            "--signal=B:USR1@50",
            "--output=link-%j.out",
            "--",
            *PREEMPT,
            "--set",
            'output.path="chained.h5"',
        ],
        workdir,
    )
    assert chain.returncode == 0, chain.stderr
    jobs = chain.stdout.split()
    first = wait_for_job(cluster, jobs[0], timeout=600)
    if first != ("FAILED", "75:0"):  # not interrupted after a checkpoint: no use in waiting
        cluster.run(["scancel", *jobs], check=False)
    states = chain_states(cluster, jobs, timeout=3000)
    logs = "\n".join(p.read_text() for p in sorted(workdir.glob("link-*.out")))
    assert first == ("FAILED", "75:0"), (
        f"first link {first}, expected interrupted by its signal (exit 75)\n{logs}"
    )
    # Links signalled before their limit checkpointed and exited 75 (138: the signal came while
    # distgn was still starting, before it could catch it); one finished, the rest were cancelled.
    finished = [i for i, s in enumerate(states) if s == ("COMPLETED", "0:0")]
    assert len(finished) == 1, f"{states}\n{logs}"
    assert all(s in (("FAILED", "75:0"), ("FAILED", "138:0")) for s in states[: finished[0]]), (
        f"{states}\n{logs}"
    )
    assert all(s[0] == "CANCELLED" for s in states[finished[0] + 1 :]), states
    assert logs.count("forwarding to the ranks") >= finished[0]
    assert "continuing from chained.ckpt.h5" in logs
    with (
        h5py.File(workdir / "chained.h5", "r") as chained,
        h5py.File(workdir / "reference.h5", "r") as ref,
    ):
        assert int(chained.attrs["finished"]) == 1
        for name in ("W", "b", "c"):
            np.testing.assert_array_equal(
                chained[f"network/{name}"][...], ref[f"network/{name}"][...]
            )
        np.testing.assert_array_equal(chained["history/loss"][...], ref["history/loss"][...])


def test_no_files_left_in_the_source_tree(cluster, tree_before):
    assert source_tree() == tree_before
