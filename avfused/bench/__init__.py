"""Benchmarks of the fused ops and the whole model against eager PyTorch and torch.compile.

    cases     what runs: subjects (four ops, the model), modes, batch sizes, the step of each case
    variants  the implementations side by side (eager, compile, triton, cuda / cpp) and where each runs
    timing    median, spread and peak memory of a step
    work      FLOPs and minimum bytes per clip, from the shapes
    targets   the issue's performance targets, met or not
    runner    runs it all into rows with ratios
    report    markdown table, CSV/JSON rows, PNG plot, README summary

The command is ``avfused bench`` (avfused.commands.bench); pytest-benchmark suites live in benchmarks/.
"""
