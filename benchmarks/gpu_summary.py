"""One page of what a GPU check found: the steps, the tests, the sanitizer, the benchmark and its targets.

    python benchmarks/gpu_summary.py WORK_DIR > summary.md

WORK_DIR is benchmarks/gpu_check.sh's folder: steps.tsv (name, exit status, seconds, limit), environment.txt,
tests.xml (pytest's junit report), sanitizer.log, bench-*/<slug>*.json. Standard library only: it must
run where the check ran, and on a log copied anywhere.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _step_rows(work: Path) -> list[tuple[str, str, str, str]]:
    """steps.tsv's rows: (name, exit status -- "skipped" for a step the deadline left out --, seconds, limit)."""
    path = work / "steps.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple((line.split("\t") + ["", "", "", ""])[:4]) for line in lines]


def _steps(work: Path) -> list[str]:
    lines = ["| step | exit | seconds | limit |", "|---|---|---|---|"]
    for name, rc, seconds, limit in _step_rows(work):
        verdict = {"0": "ok", "124": "timed out", "137": "timed out", "skipped": "not run: the deadline was reached"
                   }.get(rc, f"FAILED ({rc})")
        lines.append(f"| {name} | {verdict} | {seconds} | {limit} |")
    return lines


def _tests(work: Path) -> list[str]:
    path = work / "tests.xml"
    if not path.exists():
        return ["no tests.xml: the tests did not run to the end"]
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    lines = [f"{passed} passed, {totals['failures']} failed, {totals['errors']} errors, {totals['skipped']} skipped "
             f"(of {totals['tests']})"]
    if any(name == "tests" and rc in ("124", "137") for name, rc, _, _ in _step_rows(work)):
        lines.append("- interrupted at the step's time limit: the tests after these did not run")
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            problem = case.find(kind)
            if problem is not None:
                message = (problem.get("message") or "").strip().splitlines()[:1]
                lines.append(f"- {kind}: {case.get('classname')}::{case.get('name')}: {' '.join(message)[:300]}")
    skipped = [case for case in root.iter("testcase") if case.find("skipped") is not None]
    reasons: dict[str, int] = {}
    for case in skipped:
        reason = (case.find("skipped").get("message") or "").strip()[:120]
        reasons[reason] = reasons.get(reason, 0) + 1
    lines += [f"- skipped x{count}: {reason}" for reason, count in sorted(reasons.items())]
    return lines


def _sanitizer(work: Path) -> list[str]:
    path = work / "sanitizer.log"
    if not path.exists():
        return ["not run"]
    text = path.read_text(errors="replace")
    summary = re.findall(r"ERROR SUMMARY: .*", text)
    runs = [line for line in text.splitlines() if line.endswith(": ok") or "FAILED" in line or "skipped" in line]
    first = text.strip().splitlines()[:1] or ["empty log"]
    return (summary[-1:] or [f"no ERROR SUMMARY line: {first[0][:200]}"]) + [f"- {line}" for line in runs]


def _bench(work: Path) -> list[str]:
    lines = []
    for path in sorted(work.glob("bench-*/*.json")):
        result = json.loads(path.read_text())
        meta = result["meta"]
        versions = meta["versions"]
        lines.append(f"**{meta['device']}, {meta['dtype']}** ({path.parent.name}; torch {versions.get('torch')}, "
                     f"triton {versions.get('triton')})")
        lines += ["", "| mode | batch | backend | median ms | x eager | x compile | peak MiB |", "|---" * 7 + "|"]
        for row in result["rows"]:
            if row["subject"] != "model":
                continue
            if row["status"] != "ok":
                lines.append(f"| {row['mode']} | {row['batch']} | {row['label']} | {row['status']}: "
                             f"{row['reason'][:80]} | | | |")
                continue

            def ratio(value):
                return "-" if value is None else f"{value:.2f}x"

            lines.append(f"| {row['mode']} | {row['batch']} | {row['label']} | {row['median_ms']:.3f} | "
                         f"{ratio(row['vs_eager'])} | {ratio(row['vs_compile'])} | {row['peak_mib'] or 0:.0f} |")
        lines += ["", "| target | backend | measured | needed | verdict |", "|---|---|---|---|---|"]
        for target in result["targets"]:
            value = "-" if target["value"] is None else f"{target['value']:.3g}"
            lines.append(f"| {target['description']} | {target['backend']} | {value} | {target['needed']} | "
                         f"{target['verdict']} {target['note'][:60]} |")
        lines.append("")
    return lines or ["no benchmark results"]


def summary(work: Path) -> str:
    environment = (work / "environment.txt").read_text(errors="replace") if (work / "environment.txt").exists() else ""
    device = re.findall(r"device (.+)", environment)
    parts = ["# avfused GPU check", "", f"Device: {device[-1] if device else 'unknown'}", "", "## Steps", "",
             *_steps(work), "", "## Tests on the GPU", "", *_tests(work), "", "## compute-sanitizer memcheck", "",
             *_sanitizer(work), "", "## Benchmark (whole model)", "", *_bench(work)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(summary(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/gpu_check")), end="")
