#!/bin/bash
# Submit a chain of training jobs, each continuing from the previous checkpoint.
#   slurm/restart_chain.sh 4 examples/demo.toml --ntasks=16
# Job 1 starts from the config; jobs 2..N run `distgn train --restart run.h5` after the previous one
# ends (afterany: a job stopped by its time limit leaves its last atomic checkpoint behind).
set -euo pipefail
links=$1 config=$2
shift 2
out=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("output", {}).get("path", "run.h5"))' "$config")
job=$(sbatch --parsable "$@" slurm/run.sbatch train "$config")
echo "submitted $job"
for _ in $(seq 2 "$links"); do
  job=$(sbatch --parsable --dependency=afterany:"$job" "$@" slurm/run.sbatch train "$config" \
        --restart "$out")
  echo "submitted $job (after the previous link)"
done
