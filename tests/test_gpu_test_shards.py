"""benchmarks/gpu_test_shards.py: the GPU check's tests as concurrent pytest processes, one report."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "gpu_test_shards.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shards = _load("gpu_test_shards", RUNNER)


def test_files_are_spread_by_test_count_largest_first():
    counts = {"a.py": 49, "b.py": 45, "c.py": 29, "d.py": 29, "e.py": 3, "f.py": 1}
    owner = shards.assign_files(counts, 2)
    # a -> 0, b -> 1, c -> 1 (45 < 49), d -> 0, e -> 1 (74 < 78), f -> 1 (77 < 78)
    assert owner == {"a.py": 0, "b.py": 1, "c.py": 1, "d.py": 0, "e.py": 1, "f.py": 1}
    assert shards.assign_files({"x.py": 1}, 3) == {"x.py": 0}  # more shards than files: the rest own none


def _suite(folder: Path) -> Path:
    """Three test files: 3 pass; 1 fails and 1 passes; 1 passes, 1 skips, 1 is deselected by -m."""
    folder.mkdir()
    (folder / "test_a.py").write_text("def test_1(): pass\ndef test_2(): pass\ndef test_3(): pass\n")
    (folder / "test_b.py").write_text("def test_fails(): assert 1 == 2\ndef test_passes(): pass\n")
    (folder / "test_c.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_skips(): pytest.skip('not here')\n"
        "@pytest.mark.slow\ndef test_deselected(): pass\n"
    )
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: deselected\n")
    return folder


def _cases(report: Path) -> dict[str, str]:
    root = ET.parse(report).getroot()
    outcome = {}
    for case in root.iter("testcase"):
        if case.get("name") is None:  # pytest's entry for the test a KeyboardInterrupt stopped
            continue
        kind = next((k for k in ("failure", "error", "skipped") if case.find(k) is not None), "passed")
        key = f"{case.get('classname')}::{case.get('name')}"
        assert key not in outcome, f"{key} ran in two shards"
        outcome[key] = kind
    return outcome


def test_shards_run_every_selected_test_once_and_report_the_failure(tmp_path):
    suite = _suite(tmp_path / "suite")
    report = tmp_path / "tests.xml"
    run = subprocess.run([sys.executable, str(RUNNER), "--shards", "2", "--junitxml", str(report), "--",
                          "-q", "-p", "no:cacheprovider", "-m", "not slow", str(suite)],
                         cwd=suite, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    outcome = _cases(report)
    assert sorted(outcome.values()) == ["failure", "passed", "passed", "passed", "passed", "passed", "skipped"]
    assert outcome["test_b::test_fails"] == "failure"
    assert "== shard 1/2: exit" in run.stdout and "== shard 2/2: exit" in run.stdout
    summary = _load("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    assert summary._tests(tmp_path)[0] == "5 passed, 1 failed, 0 errors, 1 skipped (of 7)"


def test_a_shard_without_files_counts_as_passed(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_only.py").write_text("def test_1(): pass\n")
    report = tmp_path / "tests.xml"
    run = subprocess.run([sys.executable, str(RUNNER), "--shards", "2", "--junitxml", str(report), "--", "-q",
                          "-p", "no:cacheprovider", str(suite)], cwd=suite, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(owns no test file)" in run.stdout
    assert _cases(report) == {"test_only::test_1": "passed"}


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout, as gpu_check.sh does")
def test_an_interrupted_run_still_reports_the_tests_that_finished(tmp_path):
    """gpu_check.sh's step limit: timeout sends SIGINT to the runner, the shards stop and still report."""
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("a", "b"):
        (suite / f"test_{name}.py").write_text("import time\ndef test_quick(): pass\n"
                                               "def test_slow(): time.sleep(120)\n")
    report = tmp_path / "tests.xml"
    started = time.monotonic()
    run = subprocess.run(["timeout", "--signal=INT", "--kill-after=10", "12", sys.executable, str(RUNNER),
                          "--shards", "2", "--junitxml", str(report), "--", "-q", "-p", "no:cacheprovider",
                          str(suite)], cwd=suite, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert run.returncode == 124, run.stdout + run.stderr  # timeout's status for a command it stopped
    outcome = _cases(report)
    assert outcome["test_a::test_quick"] == "passed" and outcome["test_b::test_quick"] == "passed"
    assert "interrupted" in run.stdout
