"""A real single-node SLURM cluster in a temporary folder, for testing the batch scripts.

``LocalSlurm`` writes a ``slurm.conf`` (one node on localhost that offers ``cpus`` CPUs whatever
the hardware, thanks to ``SlurmdParameters=config_overrides``; ``proctrack/linuxproc``,
``task/none``, ``select/cons_tres``, free ports), starts its own ``munged`` (own key and socket),
``slurmctld`` and ``slurmd``, and stops all three on ``stop``. State, spool, logs and sockets all
live in the temporary folder; nothing outside it is written. Needs root (slurmd runs jobs as the
submitting user) and Debian's ``slurm-wlm`` and ``munge`` packages.

Run as a script (``python tests/slurm_cluster.py -- sbatch ...``) it starts a cluster, runs one
command with ``SLURM_CONF`` pointing at it and stops the cluster again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "distgn-node"
PARTITION = "debug"


def unavailable_reason() -> str | None:
    """Why a local cluster cannot run here, or None when it can."""
    missing = [
        name
        for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "sinfo")
        if shutil.which(name) is None and not Path("/usr/sbin", name).exists()
    ]
    if missing:
        return (
            f"slurm-wlm/munge not installed ({', '.join(missing)} missing); on Debian: "
            "apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their user)"
    running = subprocess.run(
        ["pgrep", "-x", "slurmctld|slurmd"], capture_output=True, text=True, check=False
    ).stdout.split()
    if running:
        return (
            f"another SLURM daemon is already running on this machine (pids "
            f"{' '.join(running)}); only one cluster fits on one machine"
        )
    return None


def _free_ports(count: int) -> list[int]:
    """``count`` TCP ports that are free on localhost now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _daemon(name: str) -> str:
    """Path of a daemon (``/usr/sbin`` is often not on a user's PATH)."""
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """A single-node SLURM cluster (munged, slurmctld, slurmd) in a private temporary folder.

    Parameters
    ----------
    cpus : int
        CPUs the node offers (may exceed the cores of the machine).
    root : Path, optional
        Folder for configuration, state and logs; a new temporary folder by default.
    """

    def __init__(self, cpus: int = 4, root: Path | None = None) -> None:
        self.cpus = cpus
        self.root = Path(root or tempfile.mkdtemp(prefix="distgn-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(mode=0o700, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (root / "plugstack.conf").write_text("")
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName=distgntest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start the daemons and wait until the node is idle."""
        self._write_config()
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                _daemon("munged"),
                "-F",
                "--force",
                f"--socket={munge}/munge.socket",
                f"--key-file={munge}/munge.key",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
        )
        self._wait_for(lambda: (munge / "munge.socket").exists(), timeout, "munged socket")
        self._spawn("slurmctld", [_daemon("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_daemon("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait_for(self._node_idle, timeout, f"node {NODE} to become idle")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def _node_idle(self) -> bool:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n" + self.logs())
        out = self.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], check=False).stdout.strip()
        return out.startswith("idle")

    def _wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f} s waiting for {what}:\n" + self.logs()
                )
            time.sleep(0.5)

    def logs(self, tail: int = 20) -> str:
        """The last lines of every daemon log (for error messages)."""
        parts = []
        for path in sorted(
            [*self.root.glob("*.log"), *self.root.glob("*.stdout"), *self.root.glob("munge/*.log")]
        ):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def run(
        self,
        argv: list[str],
        timeout: float = 60.0,
        check: bool = True,
        cwd: Path | str | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, squeue, scontrol, ...) against this cluster."""
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=cwd,
            env={**self.env, **(env or {})},
        )

    def wait_idle(self, timeout: float) -> None:
        """Wait until no job is pending or running."""
        self._wait_for(
            lambda: not self.run(["squeue", "-h", "-o", "%i"]).stdout.strip(),
            timeout,
            "the queue to drain",
        )

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, ...)."""
        out = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel all jobs and stop the daemons (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", "root"], check=False)
            try:
                self.wait_idle(timeout)
            except (TimeoutError, RuntimeError, subprocess.SubprocessError):
                pass  # the daemons are stopped below in any case
        for name in reversed(DAEMONS):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)

    def remove(self) -> None:
        """Delete the temporary folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Start a cluster, run ``argv`` against it, stop it; returns the command's status."""
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    cluster = LocalSlurm()
    try:
        cluster.start()
        print(f"SLURM_CONF={cluster.conf}", file=sys.stderr)
        return subprocess.run(argv, env=cluster.env, check=False).returncode
    finally:
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] if sys.argv[1:2] != ["--"] else sys.argv[2:]))
