"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only`` (settings: avfused.bench.suite's variables).

Unlike tests/, nothing here switches the Triton interpreter on: an interpreted kernel is never benchmarked.
"""

import pytest

from avfused.bench.suite import SuiteRunner, SuiteSkip, suite_rounds, suite_settings


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject's addopts pass --benchmark-disable (the test suite measures nothing); asking for
    # --benchmark-only means "measure", so it wins here instead of being a usage error.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_disable = False


SETTINGS = suite_settings()


@pytest.fixture(scope="session")
def suite_runner() -> SuiteRunner:
    return SuiteRunner(SETTINGS)


@pytest.fixture
def run_case(benchmark, suite_runner):
    """Benchmark one (case, variant): warm up (compiling), then time suite_rounds() rounds side by side per group."""

    def run(case, variant):
        try:
            step = suite_runner.step(case, variant)
        except SuiteSkip as exc:
            pytest.skip(str(exc))
        benchmark.group = f"{case.subject} {case.mode} batch {case.batch}"
        benchmark.extra_info.update(suite_runner.work(case))
        benchmark.extra_info["device"] = str(SETTINGS.device)
        benchmark.extra_info["config"] = SETTINGS.config_name
        step()  # the first call compiles and allocates; it is not timed
        benchmark.pedantic(step, rounds=suite_rounds(), iterations=1, warmup_rounds=1)

    return run
