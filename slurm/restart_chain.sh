#!/bin/bash
# Submit a chain of LINKS training jobs, each starting after the previous one ends
# (--dependency=afterany) and continuing from its checkpoint:
#   slurm/restart_chain.sh LINKS CONFIG [sbatch options] [-- distgn options]
#   slurm/restart_chain.sh 4 examples/demo.toml --ntasks=16 --time=12:00:00 -- --set train.max_iter=5000
# Each link is slurm/chain.sbatch: it gets SIGUSR1 300 s before its time limit, the ranks write a
# checkpoint and exit 75, and the next link restarts from it. Once the run has finished (or failed
# with an error) the remaining links are cancelled. Prints the job ids, one per line.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '4,5p' "$0" >&2; exit 2; }
links=$1 config=$2
shift 2
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_opts+=("$1"); shift; done
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
export DISTGN_SRC=${DISTGN_SRC:-$(dirname "$here")}
name="distgn-chain-$(basename "$config" .toml)-$(date +%s)-$$"
job=$(sbatch --parsable --job-name="$name" "${sbatch_opts[@]}" "$here/chain.sbatch" "$config" "$@")
echo "$job"
for _ in $(seq 2 "$links"); do
  job=$(sbatch --parsable --job-name="$name" --dependency=afterany:"$job" "${sbatch_opts[@]}" \
        "$here/chain.sbatch" "$config" "$@")
  echo "$job"
done
