"""Markdown pivot of one or more ``llmprune sweep`` results: rows = variants, columns = sparsity levels.

Each cell is the perplexity (and, with ``--seconds``, the compression time). Several sweep folders can be merged,
each with a label prefix, e.g. the same sweep calibrated on different data:

    python benchmarks/sweep_table.py benchmarks/results/dsnot_smollm2 --seconds
    python benchmarks/sweep_table.py self=benchmarks/results/calib_self_smollm2 \\
        wikitext2=benchmarks/results/calib_wikitext2_smollm2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(arg: str) -> tuple[str, dict]:
    label, _, folder = arg.rpartition("=")
    return label, json.loads((Path(folder) / "sweep.json").read_text())


def table(sweeps: list[tuple[str, dict]], seconds: bool) -> str:
    levels: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    lines = []
    for label, sweep in sweeps:
        lines.append(f"- {label + ': ' if label else ''}{sweep['model']}, dense perplexity {sweep['dense_ppl']:.2f}; "
                     f"perplexity {json.dumps(sweep.get('protocol'))}; calibration {json.dumps(sweep['calibration'])}")
        for point in sweep["points"]:
            name = f"{label} {point['variant']}".strip()
            levels.append(point["sparsity"]) if point["sparsity"] not in levels else None
            text = f"{point['ppl']:.2f}"
            if seconds:
                text += f" ({point['compress_seconds']:.0f} s)"
            cells.setdefault(name, {})[point["sparsity"]] = text
    head = ["| variant | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
    rows = [f"| {name} | " + " | ".join(by.get(level, "—") for level in levels) + " |" for name, by in cells.items()]
    return "\n".join(lines + [""] + head + rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep output folders, optionally LABEL=FOLDER")
    parser.add_argument("--seconds", action="store_true", help="add each cell's compression time")
    args = parser.parse_args()
    print(table([load(arg) for arg in args.sweeps], args.seconds), end="")


if __name__ == "__main__":
    main()
