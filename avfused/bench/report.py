"""Turn a BenchResult into what people read: a markdown report, CSV and JSON rows, a PNG of the ratios.

markdown_report(result) -> str          the terminal output and benchmarks/results/<device>.md
readme_summary(result, link) -> str     the short table the README shows (whole model + targets)
write_outputs(result, directory) -> {kind: path}   <slug>.md, .json, .csv and .png (PNG if matplotlib is there);
                                        <slug> is the device's, plus "-bf16" / "-fp16" for an autocast run
update_readme(path, summary)            replace the text between the README's bench markers
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from avfused.bench.cases import ALL_SUBJECTS, MODEL, MODES, block_stage
from avfused.bench.runner import BenchResult, Row
from avfused.bench.variants import VARIANTS, variant_label
from avfused.config import ModelConfig

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"

COLUMNS = (
    "mode",
    "batch",
    "backend",
    "median ms",
    "spread",
    "x eager",
    "x compile",
    "peak MiB",
    "mem / eager",
    "GFLOP/s",
    "GB/s",
    "% roofline",
    "1st call s",
)


def _number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.{digits + 1}g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def _row_cells(row: Row) -> list[str]:
    if row.status != "ok":
        return [row.mode, str(row.batch), row.label, row.status, row.reason] + [""] * (len(COLUMNS) - 5)
    return [
        row.mode,
        str(row.batch),
        row.label,
        _number(row.median_ms, 3),
        f"±{100 * row.spread / 2:.0f}%" if row.spread is not None else "-",
        _ratio(row.vs_eager),
        _ratio(row.vs_compile),
        _number(row.peak_mib, 1),
        _ratio(row.mem_vs_eager),
        _number(row.gflops_per_s),
        _number(row.gbytes_per_s),
        _number(row.roofline_pct, 1),
        _number(row.first_call_s, 2),
    ]


def _sorted_rows(rows: Sequence[Row]) -> list[Row]:
    order = {name: i for i, name in enumerate(VARIANTS)}
    return sorted(rows, key=lambda r: (ALL_SUBJECTS.index(r.subject), MODES.index(r.mode), r.batch, order[r.variant]))


def _header(result: BenchResult) -> list[str]:
    meta = result.meta
    v = meta["versions"]
    config = meta["config"]
    lines = [
        f"# avfused benchmarks: {meta['device']}",
        "",
        f"- machine: {meta['device']}; {meta['cpu_cores']} CPU cores, {meta['torch_threads']} torch threads, "
        f"load average {_number(meta['load_average'])} at the start",
        f"- versions: avfused {v['avfused']}, torch {v['torch']}, triton {v['triton'] or 'not installed'}, "
        f"python {v['python']}, CUDA runtime {v['cuda_runtime'] or '-'}; commit {meta['git_commit'] or 'unknown'}",
        f"- model config: {meta['config_name']} (widths {config['widths']}, depths {config['depths']}, "
        f"{config['frames']} frames of {config['image_size']}px, {config['clip_seconds']} s audio, "
        f"{config['sinc_filters']} sinc filters x {config['sinc_kernel_size']} taps), {meta['dtype']}",
        f"- run: {meta['date_utc']} UTC, up to {meta['max_repeats']} timed repeats within {meta['budget_s']} s "
        f"per case after {meta['warmup']} warm-up calls" + (" (--quick)" if meta["quick"] else ""),
    ]
    if meta["command"]:
        lines.append(f"- command: `{meta['command']}`")
    return lines


def _subject_title(subject: str, result: BenchResult) -> str:
    if subject == MODEL:
        return "whole model"
    stage = block_stage(subject)
    if stage is None:
        return f"{subject} (stage-0 shapes)"
    config = ModelConfig.from_dict(result.meta["config"])
    side = config.video_sizes()[stage]
    return (f"{subject}: one CAVL block of stage {stage} ({config.widths[stage]} channels, {config.frames} frames of "
            f"{side}x{side}, audio length {config.audio_lengths()[stage]})")


def _legend(result: BenchResult) -> str:
    meta = result.meta
    memory = (
        "CUDA allocator peak (max_memory_allocated)"
        if meta["device_type"] == "cuda"
        else f"resident-set peak ({meta['memory_method']})"
    )
    peak = meta["hardware_peak"]
    roofline = (
        f"% roofline: the time the work figures need at the device's peak ({peak['fp32_flops'] / 1e12:.0f} TFLOP/s "
        f"fp32, {peak['bandwidth'] / 1e12:.2f} TB/s) over the measured time"
        if peak
        else "% roofline: needs a known GPU's peak figures (none for this device)"
    )
    return (
        "median ms: median time of one call (the whole batch); spread: ± half the p20-p80 range over the median; "
        "x eager / x compile: times faster than the reference eager / under torch.compile on the same case in this "
        f"run (higher is better); peak MiB: {memory} of one call above the memory in use before it (inputs, "
        "weights and optimiser state excluded); mem / eager: that peak as a fraction of eager's; GFLOP/s and GB/s: "
        f"the work figures per clip x batch / median time; {roofline}; 1st call s: the first call, compilation "
        "included. cpp = the cuda backend's C++ CPU path; its model inference rows time the folded model "
        "(avfused.inference, what avfused detect / eval run on the CPU), its training rows the model as trained."
    )


DETECTION_COLUMNS = (
    "model",
    "backend",
    "threads",
    "windows",
    "hop s",
    "wall s",
    "decode s",
    "model s",
    "waiting s",
    "CPU s",
    "wall s per minute",
)


def _detection_cells(row) -> list[str]:
    if row.status != "ok":
        return [row.preset, row.backend or "-", row.status, row.reason] + [""] * (len(DETECTION_COLUMNS) - 4)
    figures = (row.wall_s, row.decode_s, row.model_s, row.wait_s, row.cpu_s, row.per_minute_s)
    return [row.preset, row.backend, str(row.threads), str(row.windows), _number(row.hop_s)] + [
        _number(value) for value in figures
    ]


def _detection_section(result: BenchResult) -> list[str]:
    rows = result.detection
    if not rows:
        return []
    first = rows[0]
    video = first.video + (f", {first.video_kbps:.0f} kbit/s" if first.video_kbps else "")
    return [
        "",
        f"### end-to-end detection ({video})",
        "",
        "`avfused detect`'s work on a generated talking-face video, random weights, default hop (back-to-back "
        "windows). Decoding runs in a thread beside the model, so decode s (that thread's busy time: decoding, "
        "RGB conversion, crops, resampling) and model s (the forward passes) overlap; waiting s: the model "
        "waiting for windows; CPU s: the process's CPU time (steadier than wall time on a busy machine). "
        f"The fastest of {first.runs} run{'s' if first.runs != 1 else ''} per model.",
        "",
        _table(DETECTION_COLUMNS, [_detection_cells(row) for row in rows]),
    ]


def markdown_report(result: BenchResult) -> str:
    device = result.meta["device_type"]
    parts = _header(result)
    parts += ["", "## Backends", ""]
    status_lines = [
        [variant_label(name, torch.device(device)), "yes" if reason is None else "no", reason or ""]
        for name, reason in result.variants.items()
    ]
    parts.append(_table(["backend", "measured", "why not"], status_lines))
    parts += ["", "## Targets", ""]
    target_lines = [
        [
            t.description,
            t.backend,
            "-" if t.batch is None else str(t.batch),
            "-" if t.value is None else f"{t.value:.2f}",
            t.needed,
            t.verdict,
            t.note,
        ]
        for t in result.targets
    ]
    parts.append(_table(["target", "backend", "batch", "measured", "needed", "verdict", "note"], target_lines))
    parts += ["", "## Results", "", _legend(result)]
    rows = _sorted_rows(result.rows)
    for subject in ALL_SUBJECTS:
        subject_rows = [row for row in rows if row.subject == subject]
        if not subject_rows:
            continue
        first = subject_rows[0]
        work_line = ""
        if first.flops_per_clip is not None:
            inference = next((r for r in subject_rows if r.mode in ("inference", "forward")), first)
            work_line = (
                f" (forward work per clip: {inference.flops_per_clip / 1e9:.3g} GFLOP, "
                f"at least {inference.bytes_per_clip / 1e6:.3g} MB moved)"
            )
        title = _subject_title(subject, result)
        parts += ["", f"### {title}{work_line}", ""]
        parts.append(_table(COLUMNS, [_row_cells(row) for row in subject_rows]))
        if subject == MODEL:
            parts += _detection_section(result)
    if not any(row.subject == MODEL for row in rows):
        parts += _detection_section(result)
    return "\n".join(parts) + "\n"


def readme_summary(result: BenchResult, link: str | None = None) -> str:
    """The whole-model rows and the targets, for the README, with the machine they came from."""
    meta = result.meta
    lines = [
        f"Latest run: **{meta['device']}**, {meta['date_utc']} UTC, torch {meta['versions']['torch']}, "
        f"config {meta['config_name']}, {meta['dtype']}" + (f"; full table: [{link}]({link})" if link else "") + ".",
        "",
    ]
    model_rows = [row for row in _sorted_rows(result.rows) if row.subject == MODEL]
    header = ["mode", "batch", "backend", "median ms", "x eager", "x compile", "peak MiB"]
    cells = [
        [r.mode, str(r.batch), r.label]
        + (
            [_number(r.median_ms, 3), _ratio(r.vs_eager), _ratio(r.vs_compile), _number(r.peak_mib, 1)]
            if r.status == "ok"
            else [r.status, "-", "-", "-"]
        )
        for r in model_rows
    ]
    if cells:
        lines += [_table(header, cells), ""]
    if result.detection:
        lines += [_table(DETECTION_COLUMNS, [_detection_cells(row) for row in result.detection]), ""]
    target_cells = [
        [t.description, t.backend, "-" if t.value is None else f"{t.value:.2f}", t.needed, t.verdict]
        for t in result.targets
    ]
    lines.append(_table(["target", "backend", "measured", "needed", "verdict"], target_cells))
    return "\n".join(lines) + "\n"


def update_readme(path: Path, summary: str) -> None:
    """Replace the text between README_START and README_END in ``path`` (both markers must be there)."""
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: expected the markers {README_START} and {README_END} around the benchmark table")
    path.write_text(text[: start + len(README_START)] + "\n" + summary + text[end:])


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
CSV_META = ("device", "device_type", "cpu_cores", "torch_threads", "config_name", "dtype", "date_utc", "git_commit")


def write_csv(result: BenchResult, path: Path) -> None:
    """One line per row, each tagged with the device, versions and config so files from many machines concatenate."""
    meta = result.meta
    tags = {key: meta[key] for key in CSV_META}
    tags.update({f"{name}_version": value for name, value in meta["versions"].items()})
    tags["config"] = json.dumps(meta["config"], sort_keys=True)
    rows = [tags | row for row in result.to_dict()["rows"]]
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_plot(result: BenchResult, path: Path) -> bool:
    """Bars of 'times faster than eager' per case and backend (eager is the line at 1), one panel per subject.

    False when matplotlib is not installed or no row has a ratio to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [
        row
        for row in _sorted_rows(result.rows)
        if row.status == "ok" and row.vs_eager is not None and row.variant != "eager"  # eager is the line at 1
    ]
    subjects = [s for s in ALL_SUBJECTS if any(row.subject == s for row in rows)]
    if not subjects:
        return False
    labels = [lab for lab in dict.fromkeys(row.label for row in rows)]
    figure, axes = plt.subplots(len(subjects), 1, figsize=(10, 2.6 * len(subjects)), squeeze=False)
    width = 0.8 / max(len(labels), 1)
    for axis, subject in zip(axes[:, 0], subjects, strict=True):
        subject_rows = [row for row in rows if row.subject == subject]
        cases = list(dict.fromkeys((row.mode, row.batch) for row in subject_rows))
        for i, label in enumerate(labels):
            values = {(r.mode, r.batch): r.vs_eager for r in subject_rows if r.label == label}
            xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(cases))]
            bars = axis.bar(xs, [values.get(case, 0.0) for case in cases], width, label=label)
            axis.bar_label(bars, labels=[f"{values[c]:.2f}" if c in values else "" for c in cases], fontsize=7)
        axis.axhline(1.0, color="black", linewidth=0.8, label="eager")
        axis.set_xticks(range(len(cases)), [f"{mode}\nbatch {batch}" for mode, batch in cases], fontsize=8)
        axis.set_ylabel("x faster than eager")
        axis.set_title(subject, fontsize=10)
        axis.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"avfused: speed-up over eager PyTorch, {result.meta['device']}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def output_stem(result: BenchResult) -> str:
    """The results' file name: the device's slug, and the autocast dtype when there is one."""
    dtype = result.meta["dtype"]
    suffix = "" if dtype == "float32" else "-" + {"bfloat16": "bf16", "float16": "fp16"}.get(dtype.split()[0], dtype)
    return result.meta["device_slug"] + suffix


def write_partial(result: BenchResult, directory: Path, report: str | None = None) -> dict[str, Path]:
    """<slug>.md and .json of the rows measured so far (written after each row, so a killed run keeps them)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / output_stem(result)
    paths = {"markdown": stem.with_suffix(".md"), "json": stem.with_suffix(".json")}
    paths["markdown"].write_text(report if report is not None else markdown_report(result))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return paths


def write_outputs(result: BenchResult, directory: Path, report: str | None = None) -> dict[str, Path]:
    """Write <slug>.md, .json, .csv (and .png when matplotlib is installed) into ``directory``."""
    paths = write_partial(result, directory, report)
    stem = directory / output_stem(result)
    paths["csv"] = stem.with_suffix(".csv")
    write_csv(result, paths["csv"])
    if write_plot(result, stem.with_suffix(".png")):
        paths["png"] = stem.with_suffix(".png")
    return paths
