#!/bin/bash
# Submit a sweep as one job array over the product of the axes in DISTGN_SWEEP:
#   DISTGN_SWEEP="network.n=64,256,1024 network.seed=0,1 solver.kind=hss,dense" \
#     slurm/sweep.sh --ntasks=8 -- train examples/demo.toml --set train.max_iter=50
# Options before "--" go to sbatch, the rest to distgn. Prints the array's job id; when all tasks
# are done, merge them with
#   python scripts/collect.py distgn-sweep-JOBID_*.out -o sweep
set -euo pipefail
: "${DISTGN_SWEEP:?set DISTGN_SWEEP to the axes, e.g. \"network.n=64,256 network.seed=0,1\"}"
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_opts+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ $# -ge 2 ] || { echo "usage: slurm/sweep.sh [sbatch options] -- COMMAND CONFIG [distgn options]" >&2; exit 2; }
read -r -a axes <<< "$DISTGN_SWEEP"
count=1
for axis in "${axes[@]}"; do
  IFS=, read -r -a values <<< "${axis#*=}"
  count=$(( count * ${#values[@]} ))
done
here=$(cd "$(dirname "$0")" && pwd)
export DISTGN_SRC=${DISTGN_SRC:-$(dirname "$here")}
sbatch --parsable --array=0-$(( count - 1 )) "${sbatch_opts[@]}" "$here/sweep.sbatch" "$@"
