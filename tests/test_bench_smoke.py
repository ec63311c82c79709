"""The benchmark harness runs, briefly, in the normal test suite so it cannot rot. No test asserts a time.

Checked: the table's structure and files (``avfused bench --quick``), that every backend is either measured
or listed with its reason (the Triton interpreter never measured), that a failing backend is reported
without stopping the run, the ratio and target arithmetic on made-up rows, the work figures against
torch's FlopCounterMode, and that the pytest-benchmark suites in benchmarks/ run.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from avfused import backends, reference
from avfused.bench import report, work
from avfused.bench.cases import MODES, OPS, SUBJECTS, Case, op_inputs, plan_cases, quick_config
from avfused.bench.runner import Row, Settings, add_ratios, run_benchmarks
from avfused.bench.targets import evaluate_targets
from avfused.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the first markdown table after ``heading``, header row first."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return table


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `avfused bench --quick` over every subject and mode, shared by the structure checks."""
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\nrest\n")
    threads = torch.get_num_threads()
    try:
        status = main(["bench", "--quick", "--output-dir", str(out), "--update-readme", str(readme)])
    finally:
        torch.set_num_threads(threads)
    files = {path.suffix: path for path in out.iterdir() if path.name != "README.md"}
    return status, out, files, readme


def test_quick_bench_writes_every_output(quick_run):
    status, _, files, readme = quick_run
    assert status == 0
    assert set(files) == {".md", ".json", ".csv", ".png"}
    assert files[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old table" not in text
    assert "Latest run: **" in text and "| target |" in text


def test_markdown_table_has_every_case_and_a_consistent_shape(quick_run):
    markdown = quick_run[2][".md"].read_text()
    for heading in ("## Backends", "## Targets", "## Results"):
        assert heading in markdown
    backends_table = _table_rows(markdown, "## Backends")
    assert backends_table[0] == ["backend", "measured", "why not"]
    listed = {cells[0]: cells for cells in backends_table[1:]}
    assert set(listed) == {"eager", "compile", "triton", "cpp"}
    for name, (_, measured, reason) in listed.items():
        assert measured in ("yes", "no")
        assert (measured == "no") == bool(reason), name  # a backend not measured always says why
    assert listed["triton"][1] == "no"  # the CPU here runs Triton only in the interpreter: never measured
    assert listed["compile"][1] == "no" and "--quick" in listed["compile"][2]
    for subject in SUBJECTS:
        title = "### whole model" if subject == "model" else f"### {subject}"
        table = _table_rows(markdown, title)
        assert table[0] == list(report.COLUMNS)
        assert all(len(cells) == len(report.COLUMNS) for cells in table)
        eager = [cells for cells in table[1:] if cells[2] == "eager"]
        expected = [(c.mode, str(c.batch)) for c in plan_cases([subject], MODES, (1, 2))]
        assert [(cells[0], cells[1]) for cells in eager] == expected
        assert all(cells[5] == "1.00x" for cells in eager)


def test_json_and_csv_rows_carry_device_versions_and_config(quick_run):
    files = quick_run[2]
    data = json.loads(files[".json"].read_text())
    meta = data["meta"]
    assert meta["device_type"] == "cpu" and meta["device"] and meta["versions"]["torch"] == torch.__version__
    assert meta["config"] == quick_config().to_dict() and meta["quick"] is True
    eager = [row for row in data["rows"] if row["variant"] == "eager"]
    assert len(eager) == len(plan_cases(SUBJECTS, MODES, (1, 2)))
    for row in eager:
        assert row["status"] == "ok" and row["repeats"] >= 2
        assert row["median_ms"] > 0 and row["peak_mib"] is not None and row["flops_per_clip"] > 0
    header = files[".csv"].read_text().splitlines()[0].split(",")
    for column in ("device", "torch_version", "config", "subject", "mode", "batch", "variant", "median_ms"):
        assert column in header
    assert {t["verdict"] for t in data["targets"]} <= {"met", "NOT met", "not measured"}


def test_blocks_on_request_one_per_stage_with_their_shapes_and_work(tmp_path, capsys):
    """--ops blocks: one CAVL block per stage of the config (the quick config has 2), every mode measured for
    eager and the C++ path, titled with the stage's shapes, FLOPs counted; not part of --ops all."""
    threads = torch.get_num_threads()
    try:
        args = ["bench", "--quick", "--ops", "blocks", "--backends", "eager,cuda", "--output-dir", str(tmp_path)]
        status = main(args)
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    config = quick_config()
    for stage in (0, 1):
        rows = [row for row in data["rows"] if row["subject"] == f"block{stage}"]
        assert {(row["mode"], row["variant"]) for row in rows} == {(m, v) for m in MODES for v in ("eager", "cuda")}
        assert all(row["status"] == "ok" and row["flops_per_clip"] > 0 for row in rows), rows
        side = config.video_sizes()[stage]
        assert f"### block{stage}: one CAVL block of stage {stage} ({config.widths[stage]} channels" in (
            next(tmp_path.glob("*.md")).read_text()
        ) and f"of {side}x{side}" in next(tmp_path.glob("*.md")).read_text()
    assert not any(row["subject"] == "model" for row in data["rows"])
    assert main(["bench", "--quick", "--ops", "block3", "--no-save"]) == 2  # the quick config has 2 stages
    assert "this model config has 2 stages" in capsys.readouterr().err


def test_a_failing_backend_is_reported_and_the_run_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    real_status = backends.available_backends
    monkeypatch.setattr(
        backends, "available_backends", lambda device=None: {**real_status(device), "cuda": None, "triton": "absent"}
    )
    monkeypatch.setattr(backends, "get_op", lambda op, name, device: broken)
    settings = Settings(
        config=quick_config(),
        config_name="quick",
        device=torch.device("cpu"),
        subjects=["conv_mlp"],
        modes=["inference"],
        batch_sizes=(1,),
        compile_skipped="off",
        warmup=1,
        repeats=1,
        min_repeats=1,
        budget_s=0.0,
    )
    result = run_benchmarks(settings, log=lambda message: None)
    by_variant = {row.variant: row for row in result.rows}
    assert by_variant["eager"].status == "ok"
    assert by_variant["cuda"].status == "failed" and "kernel exploded" in by_variant["cuda"].reason
    assert result.variants["triton"] is not None  # absent (or the interpreter, which is never measured)
    assert "kernel exploded" in report.markdown_report(result)


def test_time_limit_reports_the_cases_it_did_not_start():
    settings = Settings(
        config=quick_config(),
        config_name="quick",
        device=torch.device("cpu"),
        subjects=["joint_token_attention", "model"],
        modes=["inference"],
        batch_sizes=(1,),
        variants=("eager",),
        time_limit_s=0.0,
    )
    result = run_benchmarks(settings, log=lambda message: None)
    assert [row.subject for row in result.rows] == ["model", "joint_token_attention"]  # the model runs first
    assert all(row.status == "skipped" and "time limit" in row.reason for row in result.rows)
    assert "time limit of 0 s reached" in report.markdown_report(result)


def test_compare_script_reads_the_json_rows(quick_run, capsys):
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    result = quick_run[2][".json"]
    assert compare.main([str(result)]) == 0
    ratios = capsys.readouterr().out
    assert "| model | inference | 1 |" in ratios
    assert compare.main([str(result), str(result), "--fail-on-regression"]) == 0  # a run against itself
    assert "0 regression(s)" in capsys.readouterr().out


def test_gpu_kernels_once_inputs_fit_every_op():
    """The sanitizer's script (benchmarks/gpu_kernels_once.py) covers every fused and layer op with inputs the
    ops accept: run here through the extension's C++ kernels, forward and backward, batch 1 and 3."""
    spec = importlib.util.spec_from_file_location("gpu_kernels_once", ROOT / "benchmarks" / "gpu_kernels_once.py")
    once = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(once)
    assert set(once.OPS) == set(backends.FUSED_OPS + backends.LAYER_OPS)
    for op in once.OPS:
        module = importlib.import_module(f"avfused.ops.{op}")
        for batch in (1, 3):
            tensors, arguments = once._inputs(op, batch)
            inputs = [t.requires_grad_() for t in tensors]
            out = module.ext(*inputs, *arguments, **once.KWARGS.get(op, {}))
            outputs = out if isinstance(out, tuple) else (out,)
            sum(o.square().sum() for o in outputs).backward()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs), op

def test_gpu_summary_reports_an_interrupted_test_step(tmp_path):
    """gpu_check.sh interrupts a step at its limit (SIGINT, so pytest still writes tests.xml): the summary says
    which tests ran, that the rest did not, and which steps the deadline left out."""
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    gpu_summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_summary)
    (tmp_path / "steps.tsv").write_text("install\t0\t80\t150\ntests\t124\t112\t110\nbench-bf16\tskipped\t0\t0\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure message="off by 2"/></testcase>'
        '<testcase classname="t" name="c"/></testsuite></testsuites>')
    text = gpu_summary.summary(tmp_path)
    assert "| install | ok | 80 | 150 |" in text and "| tests | timed out | 112 | 110 |" in text
    assert "| bench-bf16 | not run: the deadline was reached |" in text
    assert "2 passed, 1 failed, 0 errors, 0 skipped (of 3)" in text
    assert "- failure: t::b: off by 2" in text
    assert "interrupted at the step's time limit" in text

def _row(variant: str, median: float, peak: float, mode: str = "train_step", batch: int = 8, subject: str = "model"):
    return Row(subject, mode, batch, variant, variant, "ok", median_ms=median, peak_mib=peak)


def test_ratios_and_targets_follow_the_definitions():
    rows = [
        _row("eager", 30.0, 900.0),
        _row("compile", 20.0, 600.0),
        _row("cuda", 10.0, 200.0),
        _row("eager", 12.0, 50.0, "inference", 1),
        _row("compile", 5.0, 50.0, "inference", 1),
        _row("cuda", 4.0, 10.0, "inference", 1),
    ]
    add_ratios(rows)
    fused = rows[2]
    assert fused.vs_eager == pytest.approx(3.0) and fused.vs_compile == pytest.approx(2.0)
    assert fused.mem_vs_eager == pytest.approx(200.0 / 900.0)
    assert rows[0].vs_eager == pytest.approx(1.0) and rows[1].vs_eager == pytest.approx(1.5)
    status = {"triton": "absent", "cuda": None}
    gpu = {(t.description, t.batch): t for t in evaluate_targets(rows, "cuda", status)}
    assert gpu[("GPU fp32 training step >= 2x eager", 8)].met is True  # 30 / 10 = 3
    assert gpu[("GPU fp32 inference >= 3x eager", 1)].met is True  # 12 / 4 = 3
    assert gpu[("GPU inference, batch 1: <= 1 ms per clip", 1)].met is False  # 4 ms
    assert gpu[("GPU training-step peak memory, whole model <= 1/4 eager", 8)].met is True  # 200 / 900
    frontend = gpu[("training-step peak memory, fused front end <= 1/4 eager", None)]
    assert frontend.met is None and "not in this run" in frontend.note
    assert not any("bf16" in description for description, _ in gpu)  # a float32 run: the bf16 targets do not apply
    bf16 = {t.description: t for t in evaluate_targets(rows, "cuda", status, "bfloat16 autocast")}
    assert bf16["GPU bf16 training step >= 3x eager"].met is True
    assert bf16["GPU bf16 training step >= 1.5x compile"].met is True  # 20 / 10 = 2
    assert "GPU fp32 training step >= 2x eager" not in bf16
    cpu = {t.description: t for t in evaluate_targets(rows, "cpu", status)}
    assert cpu["CPU inference, batch 1: fused >= 7x eager"].met is False  # 12 / 4 = 3
    assert cpu["CPU inference, batch 1: fused >= 5x compile"].met is False  # 5 / 4 = 1.25
    assert cpu["CPU inference, batch 1: <= 40 ms per clip"].met is True
    assert cpu["CPU training step: fused >= 1.5x eager"].met is True
    rows[5].median_ms = 1.5
    add_ratios(rows)
    cpu = {t.description: t for t in evaluate_targets(rows, "cpu", status)}
    assert cpu["CPU inference, batch 1: fused >= 7x eager"].met is True  # 12 / 1.5 = 8
    assert cpu["CPU inference, batch 1: fused >= 5x compile"].met is False  # 5 / 1.5 = 3.3


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("batch", [1, 3])
def test_work_figures_match_the_flop_counter(op, batch):
    config = quick_config()
    inputs = op_inputs(op, config, batch, torch.device("cpu"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        getattr(reference, op)(*inputs.tensors, **inputs.kwargs)
    figures = work.op_work(op, config, batch)
    assert figures.matmul_flops * batch == pytest.approx(counter.get_total_flops(), rel=1e-9)
    flops, moved = figures.for_mode("train_step")
    assert flops == pytest.approx(3 * figures.forward_flops) and moved > figures.forward_bytes > 0


def test_model_flops_are_counted_per_clip():
    config = quick_config()
    one = work.count_model_flops(config)
    assert one > sum(work.op_work(op, config, 1).matmul_flops for op in OPS)
    assert work.model_work(config, 4, one).for_mode("inference")[0] == one


def test_plan_runs_training_modes_at_the_largest_batch_only():
    cases = plan_cases(["conv_mlp"], MODES, (4, 1))
    assert Case("conv_mlp", "inference", 1) in cases and Case("conv_mlp", "inference", 4) in cases
    assert {c.batch for c in cases if c.mode != "inference"} == {4}


@pytest.mark.slow
def test_pytest_benchmark_suites_run_and_measure(tmp_path):
    """`pytest benchmarks/ --benchmark-only` on tiny shapes: it overrides pyproject's --benchmark-disable."""
    env = {**os.environ, "AVFUSED_BENCH_QUICK": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # as a user runs it: the suite must not measure interpreted kernels
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q", "-p", "no:cacheprovider"]
    command += [f"--benchmark-json={out}", "-k", "eager or cuda"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    measured = json.loads(out.read_text())["benchmarks"]
    groups = {entry["group"] for entry in measured}
    expected = {f"{c.subject} {c.mode} batch {c.batch}" for c in plan_cases(SUBJECTS, MODES, (1, 2))}
    assert groups == expected
    assert all(entry["stats"]["rounds"] >= 2 and entry["extra_info"]["flops_per_clip"] > 0 for entry in measured)


@pytest.mark.skipif(backends.unavailable_reason("cuda", "cpu") is not None, reason="the C++ extension is not built")
def test_cpp_inference_times_the_folded_model_as_detect_runs_it():
    """The cpp variant's inference is what auto's inference runs on the CPU (the folded copy); its training modes
    and the baselines run the model as trained."""
    from avfused.bench.variants import Implementations
    from avfused.inference import FoldedNet
    from avfused.model import SingleStreamNet

    implementations = Implementations(quick_config(), torch.device("cpu"))
    assert isinstance(implementations.model("cuda", "inference"), FoldedNet)
    assert isinstance(implementations.model("cuda", "train_step"), SingleStreamNet)
    assert isinstance(implementations.model("eager", "inference"), SingleStreamNet)
