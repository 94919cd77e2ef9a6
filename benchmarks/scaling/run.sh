#!/bin/bash
# The scaling and solver studies of benchmarks/scaling (about 8 minutes on 2 cores); each writes
# NAME.csv/.json/.md (every row with peak_memory_bytes and bytes_sent, or "missing" where distgn's
# JSON does not report them), NAME.fits.json (fitted slopes) and NAME.png.
set -u
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
S=".venv/bin/python scripts/study.py"
L="mpiexec --oversubscribe -n {ranks}"
O=benchmarks/scaling
$S strong examples/solve-1d.toml --ranks 1,2,4 --set network.n=16384 --launch "$L" -o $O/strong_1d
$S weak examples/solve-1d.toml --ranks 1,2,4 --n0 4096 --per-rank n2 --launch "$L" -o $O/weak_1d_stored
$S strong examples/solve-1d.toml --ranks 1,2,4 --set network.n=1048576 --set solver.matrix_free=true --launch "$L" -o $O/strong_1d_matrix_free
$S weak examples/solve-1d.toml --ranks 1,2,4 --n0 262144 --per-rank n --set solver.matrix_free=true --launch "$L" -o $O/weak_1d_matrix_free
$S conditioning examples/demo.toml --sizes 64,128,256,512,1024 --ranks 2 --launch "$L" -o $O/conditioning
$S solvers examples/demo.toml --sizes 512,1024,2048,4096 --solvers hss,dense,krylov --ranks 2 --launch "$L" -o $O/solvers_1d
$S sggn examples/demo.toml --sizes 16,32,64 --ranks 2 --launch "$L" -o $O/sggn
