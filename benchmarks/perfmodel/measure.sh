#!/bin/bash
# The measurements and fits of benchmarks/perfmodel (see docs/performance-model.md).
#   benchmarks/perfmodel/measure.sh            # measure (about 2 minutes on 2 cores), then fit
#   benchmarks/perfmodel/measure.sh fit        # fit again from the stored measurements
set -eu
R=$(cd "$(dirname "$0")/../.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PY=$R/.venv/bin/python
OUT=$R/benchmarks/perfmodel
if [ "${1:-}" != fit ]; then
  M="mpiexec --oversubscribe"
  MEASURE="$PY $R/scripts/perfmodel.py measure"
  mkdir -p "$OUT/measurements"
  rm -f "$OUT"/measurements/*.json
  cd "$OUT/measurements"
  mpiexec -n 2 $PY $R/scripts/perfmodel.py calibrate -o cal.json
  for P in 1 2 4; do
    $M -n $P $MEASURE $R/examples/solve-1d.toml --set network.n=8192 -o 1d-8192-P$P.json
    $M -n $P $MEASURE $R/examples/solve-2d.toml --set network.n=1024 -o 2d-1024-P$P.json
  done
  $M -n 1 $MEASURE $R/examples/solve-1d.toml --set network.n=4096 -o 1d-4096-P1.json
  $M -n 1 $MEASURE $R/examples/solve-1d.toml --set network.n=16384 -o 1d-16384-P1.json
  $M -n 1 $MEASURE $R/examples/solve-2d.toml --set network.n=2048 -o 2d-2048-P1.json
  for P in 1 2 4; do
    $M -n $P $MEASURE $R/examples/solve-1d.toml --set network.n=1048576 \
      --set solver.matrix_free=true -o mf-1048576-P$P.json
  done
  $M -n 1 $MEASURE $R/examples/solve-1d.toml --set network.n=262144 \
    --set solver.matrix_free=true -o mf-262144-P1.json
fi
cd "$R"
MEAS=benchmarks/perfmodel/measurements
MODEL="$PY scripts/perfmodel.py model $MEAS/cal.json"
$MODEL $MEAS/1d-*.json --extrapolate-n 1e4,3e4,1e5 \
  --title "1D stored block rows (extrapolated)" -o benchmarks/perfmodel/1d_stored
$MODEL $MEAS/mf-*.json --extrapolate-n 1e5,1e6,1e7 \
  --title "1D matrix-free (extrapolated)" -o benchmarks/perfmodel/1d_matrix_free
$MODEL $MEAS/2d-*.json --extrapolate-n 1e4,3e4,1e5 \
  --title "2D box, tol 1e-8, stored rows (extrapolated)" -o benchmarks/perfmodel/2d
