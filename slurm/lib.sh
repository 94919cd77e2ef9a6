# shellcheck shell=bash
# Shared by the batch scripts in slurm/ (sourced, not submitted).
#
# Environment:
#   DISTGN_ENV     virtual environment with distgn installed (required; see README "HPC install")
#   DISTGN_LAUNCH  MPI launcher command, e.g. "srun", "srun --mpi=pmix", "mpiexec -n 64".
#                  Default: detected once per job - "srun" when a 2-task `srun` probe of mpi4py
#                  sees the right communicator size (the MPI has Slurm PMI support), else
#                  "mpiexec -n $SLURM_NTASKS" inside the allocation (Debian's Open MPI, for
#                  one, cannot be direct-launched: "OMPI was not built with SLURM's PMI support").
#
# distgn_run ARGS... starts "$DISTGN_LAUNCH distgn ARGS..." in the background and waits for it.
# SIGUSR1 or SIGTERM to the batch shell (`#SBATCH --signal=B:USR1@300`, `scancel --signal`) is
# forwarded to the launcher, which forwards it to the ranks (srun and Open MPI's mpiexec both do);
# distgn then checkpoints and exits 75. Returns distgn's exit status.

: "${DISTGN_ENV:?set DISTGN_ENV to the virtual environment that has distgn installed}"
# shellcheck disable=SC1091
source "$DISTGN_ENV/bin/activate"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

distgn_launcher() {
  if [ -n "${DISTGN_LAUNCH:-}" ]; then
    read -r -a DISTGN_LAUNCHER <<< "$DISTGN_LAUNCH"
    return
  fi
  local tasks=$(( ${SLURM_NTASKS:-1} < 2 ? ${SLURM_NTASKS:-1} : 2 ))
  if timeout 120 srun --ntasks="$tasks" --nodes=1-"$tasks" python -c \
      "import os, sys; from mpi4py import MPI; sys.exit(MPI.COMM_WORLD.size != $tasks)" \
      >/dev/null 2>&1; then
    DISTGN_LAUNCHER=(srun)
  else
    DISTGN_LAUNCHER=(mpiexec -n "${SLURM_NTASKS:-1}")
  fi
  DISTGN_LAUNCH="${DISTGN_LAUNCHER[*]}"
  export DISTGN_LAUNCH
}

distgn_run() {
  [ -n "${DISTGN_LAUNCHER+x}" ] || distgn_launcher
  echo "distgn: launching with: ${DISTGN_LAUNCHER[*]} distgn $*" >&2
  "${DISTGN_LAUNCHER[@]}" distgn "$@" &
  local pid=$!
  # shellcheck disable=SC2064
  trap "echo 'distgn: batch shell got SIGUSR1, forwarding to the ranks' >&2; kill -USR1 $pid" USR1
  # shellcheck disable=SC2064
  trap "echo 'distgn: batch shell got SIGTERM, forwarding to the ranks' >&2; kill -TERM $pid" TERM
  # A trapped signal interrupts `wait`; wait again until the launcher has really exited.
  while :; do
    wait "$pid" || true
    kill -0 "$pid" 2>/dev/null || break
  done
  local status=0
  wait "$pid" || status=$?
  trap - USR1 TERM
  return "$status"
}
