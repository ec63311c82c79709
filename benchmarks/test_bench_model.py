"""The whole SingleStreamNet: inference, forward, forward+backward and a training step, every variant."""

import pytest

from avfused.bench.cases import MODEL, MODES, plan_cases
from avfused.bench.suite import suite_settings
from avfused.bench.variants import VARIANTS

CASES = plan_cases([MODEL], MODES, suite_settings().batch_sizes)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode}-b{c.batch}")
def test_model(run_case, case, variant):
    run_case(case, variant)
