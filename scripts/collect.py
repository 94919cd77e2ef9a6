"""Merge the results of SLURM jobs (sweeps, scaling runs) into one table.

    python scripts/collect.py distgn-sweep-1234_*.out -o sweep
    python scripts/collect.py distgn-results/ -o strong        # every *.out in the folder

Each job's output holds distgn's JSON result as its last JSON line and, for sweep tasks, a line
``# sweep: key=value ...`` (slurm/sweep.sbatch). Writes ``PREFIX.csv``, ``PREFIX.json`` (all
rows, every key) and ``PREFIX.md`` (a Markdown table). Every row has the per-rank memory
(``peak_memory_bytes``, the largest rank's peak resident set) and the bytes sent between ranks
(``bytes_sent_per_rank``: what the busiest rank handed to MPI over the whole command, distgn's
``comm_bytes_max``; ``bytes_sent``: sum over the hss tree levels of ``bytes_sent_per_level``);
where distgn's JSON does not report one, the table says ``missing``. Jobs without a JSON result
(failed, cancelled) are listed on stderr and left out; the exit status is 1 if there were any.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

MISSING = "missing"
FIRST = [
    "n",
    "d",
    "ranks",
    "solver",
    "method",
    "matrix_free",
    "iterations",
    "seconds_assemble",
    "seconds_factor",
    "seconds_solve",
    "seconds",
    "backward_error",
    "fit_l2_error",
    "relative_l2_error",
    "loss",
    "stop_reason",
    "max_rank",
    "peak_memory_bytes",
    "bytes_sent_per_rank",
    "bytes_sent",
]


def read_job(path: Path) -> dict | None:
    """The sweep parameters and JSON result of one job's output, or None without a result."""
    params: dict[str, str] = {}
    result = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# sweep:"):
            for item in line[len("# sweep:") :].split():
                key, _, value = item.partition("=")
                params[key] = value
        elif line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
    if result is None:
        return None
    return with_traffic({**params, **result, "job_output": path.name})


def with_traffic(row: dict) -> dict:
    """Add ``bytes_sent`` (the hss factorization's tree levels, all ranks) and
    ``bytes_sent_per_rank`` (everything the busiest rank handed to MPI), and mark per-rank memory /
    bytes ``missing`` where not reported."""
    if "bytes_sent_per_level" in row:
        row["bytes_sent"] = int(sum(row["bytes_sent_per_level"]))
    if "comm_bytes_max" in row:
        row["bytes_sent_per_rank"] = row["comm_bytes_max"]
    for key in ("peak_memory_bytes", "bytes_sent_per_rank", "bytes_sent"):
        row.setdefault(key, MISSING)
    return row


def job_files(inputs: list[str]) -> list[Path]:
    """Files named on the command line; folders contribute their ``*.out`` files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        files.extend(sorted(path.glob("*.out")) if path.is_dir() else [path])
    return files


def collect(inputs: list[str]) -> tuple[list[dict], list[Path]]:
    """Rows of all jobs with a result, and the outputs without one."""
    rows, failed = [], []
    for path in job_files(inputs):
        row = read_job(path)
        if row is None:
            failed.append(path)
        else:
            rows.append(row)
    return rows, failed


def scalar_columns(rows: list[dict]) -> list[str]:
    """Sweep parameters first, then the usual result keys, then every other scalar key."""
    params = [k for row in rows for k in row if "." in k]
    keys = [k for row in rows for k, v in row.items() if not isinstance(v, (list, dict))]
    ordered = list(dict.fromkeys([*params, *[k for k in FIRST if k in keys], *keys]))
    return ordered


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _sort_key(value: object) -> tuple[int, float, str]:
    """Numbers before text, numbers by value."""
    try:
        return (0, float(value), "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def write_tables(rows: list[dict], prefix: Path) -> list[Path]:
    """Write PREFIX.csv, PREFIX.json and PREFIX.md; return their paths."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    columns = scalar_columns(rows)
    paths = [prefix.with_suffix(".csv"), prefix.with_suffix(".json"), prefix.with_suffix(".md")]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    paths[2].write_text("\n".join(lines) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 1 when some job had no result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="job output files or folders of *.out files")
    parser.add_argument("-o", "--output", default="results", help="prefix of the tables")
    parser.add_argument("--sort", default="", help="comma-separated keys to sort the rows by")
    args = parser.parse_args(argv)
    rows, failed = collect(args.inputs)
    for path in failed:
        print(f"collect: no JSON result in {path} (job failed or was cancelled)", file=sys.stderr)
    if args.sort:
        keys = args.sort.split(",")
        rows.sort(key=lambda row: tuple(_sort_key(row.get(k, "")) for k in keys))
    if not rows:
        print("collect: no results", file=sys.stderr)
        return 1
    for path in write_tables(rows, Path(args.output)):
        print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
