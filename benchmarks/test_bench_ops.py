"""Each fused op (stage-0 shapes of the model), every mode and batch size, every variant that runs here."""

import pytest

from avfused.bench.cases import MODES, OPS, plan_cases
from avfused.bench.suite import suite_settings
from avfused.bench.variants import VARIANTS

CASES = plan_cases(OPS, MODES, suite_settings().batch_sizes)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.subject}-{c.mode}-b{c.batch}")
def test_op(run_case, case, variant):
    run_case(case, variant)
