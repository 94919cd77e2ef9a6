"""Plot a strong-scaling study from the ``scaling-P.json`` files of slurm/scaling.sbatch.

    python scripts/plot_scaling.py scaling-*.json -o scaling.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("-o", "--output", default="scaling.png")
    args = parser.parse_args()
    runs = sorted((json.load(open(f)) for f in args.files), key=lambda r: r["ranks"])
    ranks = [r["ranks"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("seconds_assemble", "seconds_factor", "seconds_solve"):
        if all(key in r for r in runs):
            ax.loglog(ranks, [r[key] for r in runs], "o-", label=key.replace("seconds_", ""))
    ax.loglog(ranks, [runs[0]["seconds_factor"] / p for p in ranks], "k:", label="ideal (factor)")
    ax.set(xlabel="ranks", ylabel="seconds", title=f"strong scaling, n = {runs[0]['n']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    for r in runs:
        print(f"P = {r['ranks']:4d}: assemble {r.get('seconds_assemble', float('nan')):.3f} s, "
              f"factor {r['seconds_factor']:.3f} s, solve {r['seconds_solve']:.4f} s, "
              f"backward error {r['backward_error']:.1e}")


if __name__ == "__main__":
    main()
