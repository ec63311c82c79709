"""Ratio tables from the JSON files ``avfused bench`` writes (benchmarks/results/<device>.json).

python benchmarks/compare.py RESULT.json
    one run: for each case, every backend's speed-up over eager and over torch.compile, side by side
python benchmarks/compare.py BASELINE.json NEW.json [--threshold 0.10] [--fail-on-regression]
    two runs (two commits, two machines): NEW's time over BASELINE's per case and backend; a ratio
    above 1 + threshold is flagged as a regression (exit status 1 with --fail-on-regression)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    if "rows" not in data or "meta" not in data:
        raise SystemExit(f"{path}: not an avfused bench result (expected 'meta' and 'rows' keys)")
    return data


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def _cases(rows: list[dict]) -> list[tuple]:
    return list(dict.fromkeys((row["subject"], row["mode"], row["batch"]) for row in rows))


def _labels(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["label"] for row in rows))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio_table(data: dict) -> str:
    """One line per case; for each backend 'speed-up over eager / over compile'."""
    rows = [row for row in data["rows"] if row["status"] == "ok"]
    labels = [label for label in _labels(rows) if label != "eager"]
    by_key = {(row["subject"], row["mode"], row["batch"], row["label"]): row for row in rows}
    lines = []
    for case in _cases(rows):
        eager = by_key.get((*case, "eager"))
        cells = [case[0], case[1], str(case[2]), f"{eager['median_ms']:.3f}" if eager else "-"]
        for label in labels:
            row = by_key.get((*case, label))
            cells.append("-" if row is None else f"{_fmt(row['vs_eager'])} / {_fmt(row['vs_compile'])}")
        lines.append(cells)
    header = ["subject", "mode", "batch", "eager ms"] + [f"{label}: x eager / x compile" for label in labels]
    meta = data["meta"]
    title = f"{meta['device']} ({meta['date_utc']} UTC, torch {meta['versions']['torch']}, {meta['config_name']})"
    return f"{title}\n\n{_table(header, lines)}\n"


def change_table(baseline: dict, new: dict, threshold: float) -> tuple[str, int]:
    """NEW median over BASELINE median per case and backend; returns the table and the number of regressions."""
    old_rows = {(r["subject"], r["mode"], r["batch"], r["label"]): r for r in baseline["rows"] if r["status"] == "ok"}
    lines, regressions = [], 0
    for row in new["rows"]:
        key = (row["subject"], row["mode"], row["batch"], row["label"])
        old = old_rows.get(key)
        if row["status"] != "ok" or old is None:
            continue
        ratio = row["median_ms"] / old["median_ms"]
        flag = ""
        if ratio > 1 + threshold:
            flag, regressions = "REGRESSION", regressions + 1
        elif ratio < 1 / (1 + threshold):
            flag = "faster"
        cells = [*map(str, key), f"{old['median_ms']:.3f}", f"{row['median_ms']:.3f}", f"{ratio:.2f}", flag]
        lines.append(cells)
    header = ["subject", "mode", "batch", "backend", "baseline ms", "new ms", "new / baseline", ""]
    machines = f"baseline: {baseline['meta']['device']} ({baseline['meta']['date_utc']}); "
    machines += f"new: {new['meta']['device']} ({new['meta']['date_utc']})"
    return f"{machines}\n\n{_table(header, lines)}\n", regressions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="one result JSON, or a baseline and a new one")
    parser.add_argument("--threshold", type=float, default=0.10, help="relative slow-down flagged as a regression")
    parser.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged")
    args = parser.parse_args(argv)
    if len(args.results) == 1:
        print(ratio_table(load(args.results[0])))
        return 0
    if len(args.results) != 2:
        parser.error("give one result file, or exactly two (baseline, new)")
    text, regressions = change_table(load(args.results[0]), load(args.results[1]), args.threshold)
    print(text)
    print(f"{regressions} regression(s) beyond {args.threshold:.0%}")
    return 1 if regressions and args.fail_on_regression else 0


if __name__ == "__main__":
    sys.exit(main())
