"""Run one pytest selection as several processes at once, each with a share of the test files, and merge
their junit reports into one.

    python benchmarks/gpu_test_shards.py --shards 4 --junitxml WORK/tests.xml -- -q -m gpu tests/ops ...

Why: on a fresh GPU machine the GPU test step is mostly Triton's first compiles, CPU work done one kernel at
a time in one process, while the machine has 16 cores and no pytest-xdist. Shards compile in parallel.
How: every shard collects the whole selection (so all of them see the same items) and keeps the test files
this module's ``assign_files`` gives it: whole files, so each op's kernels compile in one shard only, spread
greedily by test count. Each shard gets cores / shards threads for its CPU references.
Interrupts: a SIGINT (the check's step limit) is passed on once to every shard, which then still writes its
report; shards still running 8 s later are killed, and the merged report holds every test that finished.
Exit status: 0 when every shard passed (a shard that owns no file counts as passed), else 1.

The same file is the shards' pytest plugin (``-p gpu_test_shards``, found through PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

SHARD_ENV = "AVFUSED_TEST_SHARD"  # "index/count" in a shard's environment
NO_TESTS_COLLECTED = 5  # pytest's exit status for a shard that owns no file
GRACE_SECONDS = 8.0  # after an interrupt, before the shards still running are killed (the step kills at 10)


def assign_files(counts: dict[str, int], shards: int) -> dict[str, int]:
    """Test file -> shard: the largest files first, each to the shard with the fewest tests so far."""
    load = [0] * shards
    owner = {}
    for path, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        shard = min(range(shards), key=lambda index: (load[index], index))
        owner[path] = shard
        load[shard] += count
    return owner


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected: balance what actually runs
def pytest_collection_modifyitems(config, items):
    spec = os.environ.get(SHARD_ENV)
    if not spec:
        return
    index, count = (int(part) for part in spec.split("/"))
    owner = assign_files(Counter(item.nodeid.split("::")[0] for item in items), count)
    kept = [item for item in items if owner[item.nodeid.split("::")[0]] == index]
    dropped = [item for item in items if owner[item.nodeid.split("::")[0]] != index]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def merge_reports(paths: list[Path], out: Path) -> bool:
    """One <testsuites> of every shard's suites; False (nothing written) when no shard wrote a report."""
    merged = ET.Element("testsuites")
    for path in paths:
        if not path.exists():
            continue
        root = ET.parse(path).getroot()
        merged.extend([root] if root.tag == "testsuite" else list(root))
    if not len(merged):
        return False
    ET.ElementTree(merged).write(out, encoding="utf-8", xml_declaration=True)
    return True


def run_shards(shards: int, junitxml: Path, pytest_args: list[str]) -> int:
    here = str(Path(__file__).resolve().parent)
    threads = str(max(1, (os.cpu_count() or 1) // shards))
    reports = [junitxml.with_name(f"{junitxml.stem}-{index}.xml") for index in range(shards)]
    logs = [junitxml.with_name(f"{junitxml.stem}-{index}.log") for index in range(shards)]
    processes = []
    for index in range(shards):
        env = dict(os.environ, **{SHARD_ENV: f"{index}/{shards}", "OMP_NUM_THREADS": threads})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "pytest", "-p", "gpu_test_shards", *pytest_args,
                   f"--junitxml={reports[index]}"]
        with open(logs[index], "w") as log:  # own sessions: only this runner passes the interrupt on, once
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))
    interrupted = False

    def interrupt(signum, frame):
        nonlocal interrupted
        interrupted = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, interrupt)
    deadline = None
    while any(process.poll() is None for process in processes):
        if interrupted and deadline is None:
            deadline = time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            for process in processes:
                if process.poll() is None:
                    process.kill()
        time.sleep(0.2)
    merged = merge_reports(reports, junitxml)
    failed = False
    for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
        rc = process.returncode
        failed |= rc not in (0, NO_TESTS_COLLECTED)
        print(f"== shard {index + 1}/{shards}: exit {rc}{' (owns no test file)' if rc == NO_TESTS_COLLECTED else ''}")
        print(log.read_text(errors="replace"), end="")
    print(f"== shards: {'merged report ' + str(junitxml) if merged else 'no shard wrote a report'}"
          f"{'; interrupted' if interrupted else ''}")
    return 1 if failed or interrupted or not merged else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--junitxml", type=Path, required=True)
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest's arguments")
    args = parser.parse_args()
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    if args.shards < 1:
        parser.error(f"--shards must be at least 1, got {args.shards}")
    sys.exit(run_shards(args.shards, args.junitxml, pytest_args))


if __name__ == "__main__":
    main()
