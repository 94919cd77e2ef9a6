#!/bin/bash
# Scaling studies: one job per rank count (job arrays cannot vary resources), each running
# `distgn solve CONFIG --json` through slurm/run.sbatch.
#   slurm/scaling.sh strong CONFIG "1 2 4 8 16" [sbatch options] [-- distgn options]
#       the same n (from CONFIG or --set network.n=...) on every rank count
#   slurm/scaling.sh weak CONFIG "1 2 4 8 16" N0 n2|n [sbatch options] [-- distgn options]
#       n = N0 sqrt(P) (n2: n^2/P fixed, stored block rows) or n = N0 P (n: n/P fixed, e.g. with
#       --set solver.matrix_free=true)
# Add e.g. --ntasks-per-node=64 to the sbatch options to spread large P over nodes. Results go to
# $DISTGN_RESULTS (default distgn-results) as <mode>-P<P>-<jobid>.out; merge and plot with
#   python scripts/study.py strong --from "$DISTGN_RESULTS" -o benchmarks/scaling/strong
set -euo pipefail
usage() { sed -n '3,8p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
mode=$1 config=$2 ranks=$3
shift 3
case $mode in
  strong) ;;
  weak) [ $# -ge 2 ] || usage; n0=$1 per_rank=$2; shift 2
        [ "$per_rank" = n2 ] || [ "$per_rank" = n ] || usage ;;
  *) usage ;;
esac
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_opts+=("$1"); shift; done
[ $# -gt 0 ] && shift
results=${DISTGN_RESULTS:-distgn-results}
mkdir -p "$results"
here=$(cd "$(dirname "$0")" && pwd)
export DISTGN_SRC=${DISTGN_SRC:-$(dirname "$here")}
for p in $ranks; do
  sets=()
  if [ "$mode" = weak ]; then
    if [ "$per_rank" = n2 ]; then
      n=$(python3 -c "import math, sys; print(round(int(sys.argv[1]) * math.sqrt(int(sys.argv[2]))))" "$n0" "$p")
    else
      n=$(( n0 * p ))
    fi
    sets=(--set "network.n=$n")
  fi
  job=$(sbatch --parsable --ntasks="$p" --job-name="distgn-$mode" \
        --output="$results/$mode-P$p-%j.out" --error="$results/$mode-P$p-%j.err" \
        "${sbatch_opts[@]}" "$here/run.sbatch" solve "$config" "$@" "${sets[@]}" \
        --set output.path="\"$results/$mode-P$p.h5\"" --json)
  echo "$job P=$p${n:+ n=$n}"
done
