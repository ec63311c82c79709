"""The audio front end's formulations side by side: the C++ direct convolution against FFT ones, time and error.

    python benchmarks/frontend_formulations.py [--repeats 5] [--threads 2] [--batches 1,8] [--out PATH]

At the small model's size (256 sinc filters of 251 taps, 3 s = 48000 samples of 16 kHz audio, the stem's
8 channels) this times, in one process with the formulations interleaved repeat by repeat:

* ``cpp direct``: the extension's fused op as a sum over taps (avfused.ops.audio_frontend_stem.ext with
  formulation="direct": symmetric taps folded, band energies never in memory);
* ``cpp fft``: the same fused op by FFT (formulation="fft", what "auto" runs on the CPU: overlap-save in
  1024-sample windows, two filters per complex transform, the log, recompute and stem fused after it);
* ``torch direct``: the reference in float32 (F.conv1d over the whole signal, then log, mean, stem conv);
* ``torch fft-ols N``: overlap-save with N-point real FFTs of the filterbank's flipped taps, in chunks of
  filters so that at most (B, chunk, S) band signals exist, then the same log, mean and stem conv;
* ``torch fft-full``: one FFT over the whole padded signal per filter chunk.

and reports, at batch 1 on two signals (white noise; bursts with near-silent gaps, where a band response
crosses zero far more often relative to its scale), each one's error against the float64 reference:
the band signals, the log band energies and the op output, at the default log_eps (1e-6, ill conditioned:
the accuracy rule there is 'no worse than PyTorch's own fp32 against float64') and at log_eps 1e-2 (where
the rule is 1e-4). The FFT formulations are prototypes in torch.fft: their times say what the operation
count buys through a library FFT, not what a fused C++ FFT kernel would reach. Writes a markdown report
(default benchmarks/results/frontend_formulations_cpu.md); the machine may be shared, so quote ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from avfused import reference
from avfused.config import ModelConfig
from avfused.nn.frontend import AudioStem
from avfused.ops import audio_frontend_stem
from avfused.testing import relative_error

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "frontend_formulations_cpu.md"
FILTER_CHUNK = 32  # filters whose band signals exist at once in the FFT prototypes
OLS_SIZES = (1024, 2048, 4096)
Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# the formulations: band signals (B, F, S) from the normalised wave x (B, S) and the filters (F, K)
# ---------------------------------------------------------------------------------------------
def bands_direct(x: Tensor, filters: Tensor) -> Tensor:
    return F.conv1d(x[:, None], filters[:, None], padding=filters.shape[1] // 2)


def bands_overlap_save(x: Tensor, filters: Tensor, nfft: int) -> Tensor:
    """'same' correlation by overlap-save: blocks of nfft samples hop nfft - K + 1; each block's circular
    convolution with the flipped taps is linear from index K - 1 on."""
    taps = filters.shape[1]
    samples, hop = x.shape[1], nfft - taps + 1
    blocks = -(-samples // hop)
    padded = F.pad(x, (taps // 2, blocks * hop + nfft - samples - taps // 2))
    spectra = torch.fft.rfft(padded.unfold(-1, nfft, hop)[:, :blocks], n=nfft)  # (B, blocks, nfft / 2 + 1)
    responses = torch.fft.rfft(filters.flip(-1), n=nfft)  # (F, nfft / 2 + 1)
    circular = torch.fft.irfft(spectra[:, None] * responses[None, :, None], n=nfft)  # (B, F, blocks, nfft)
    return circular[..., taps - 1 :].reshape(x.shape[0], filters.shape[0], -1)[..., :samples]


def bands_full_fft(x: Tensor, filters: Tensor) -> Tensor:
    taps, samples = filters.shape[1], x.shape[1]
    nfft = 1 << math.ceil(math.log2(samples + taps - 1))
    spectra = torch.fft.rfft(x, n=nfft)
    responses = torch.fft.rfft(filters.flip(-1), n=nfft)
    linear = torch.fft.irfft(spectra[:, None] * responses[None], n=nfft)
    return linear[..., taps // 2 : taps // 2 + samples]


def op_from_bands(bands: Callable[[Tensor, Tensor], Tensor], wave: Tensor, low_hz: Tensor, band_hz: Tensor,
                  stem_weight: Tensor, log_eps: float, chunk: int | None = FILTER_CHUNK) -> Tensor:
    """The whole op (audio_frontend_stem) with the band signals from ``bands``, filter chunk by chunk: the stem
    convolution is linear over filters, so each chunk's log energies add their share and are dropped."""
    x = reference.preemphasis_and_norm(wave)
    filters = reference.sinc_filterbank(low_hz, band_hz)
    chunk = chunk or filters.shape[0]
    out = None
    for f0 in range(0, filters.shape[0], chunk):
        energies = torch.log(bands(x, filters[f0 : f0 + chunk]).abs() + log_eps)
        energies = energies - energies.mean(dim=2, keepdim=True)
        part = F.conv1d(energies, stem_weight[:, f0 : f0 + chunk], stride=reference.STEM_STRIDE,
                        padding=reference.STEM_KERNEL // 2)
        out = part if out is None else out + part
    return out


def formulations() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    found = {"direct": bands_direct, "fft-full": bands_full_fft}
    for size in OLS_SIZES:
        found[f"fft-ols {size}"] = lambda x, h, size=size: bands_overlap_save(x, h, size)
    return found


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def signal(kind: str, batch: int, samples: int, generator: torch.Generator) -> Tensor:
    """'noise': white noise; 'bursts': noise with a tone in 0.3 s bursts, 1e-3 of it in the 0.2 s between."""
    noise = 0.1 * torch.randn(batch, samples, generator=generator, dtype=torch.float64)
    if kind == "noise":
        return noise
    t = torch.arange(samples, dtype=torch.float64) / 16000
    envelope = torch.where((t % 0.5) < 0.3, 1.0, 1e-3)
    return (noise + 0.2 * torch.sin(2 * math.pi * 440 * t)) * envelope


def stem_parameters(config: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    stem = AudioStem(config, config.widths[0])
    return stem.frontend.low_hz.detach(), stem.frontend.band_hz.detach(), stem.weight.detach()


# ---------------------------------------------------------------------------------------------
# timing and errors
# ---------------------------------------------------------------------------------------------
def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms per call, the calls taking turns each repeat (a shared machine's load hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


FUSED = ("direct", "fft")  # the extension's two CPU forwards


def errors(wave64: Tensor, params: tuple[Tensor, ...], log_eps: float) -> list[dict]:
    """Each formulation's relative errors against float64 at one log_eps (and torch fp32's, the rule's yardstick)."""
    low, band, weight = params
    x64 = reference.preemphasis_and_norm(wave64)
    filters64 = reference.sinc_filterbank(low.double(), band.double())
    bands64 = bands_direct(x64, filters64)
    energies64 = torch.log(bands64.abs() + log_eps)
    energies64 = energies64 - energies64.mean(dim=2, keepdim=True)
    out64 = reference.audio_frontend_stem(wave64, low.double(), band.double(), weight.double(), log_eps=log_eps)
    wave = wave64.float()
    x, filters = reference.preemphasis_and_norm(wave), reference.sinc_filterbank(low, band)
    rows = []
    for name, bands in formulations().items():
        y = bands(x, filters)
        energies = torch.log(y.abs() + log_eps)
        energies = energies - energies.mean(dim=2, keepdim=True)
        out = op_from_bands(bands, wave, low, band, weight, log_eps)
        rows.append({"formulation": f"torch {name}", "bands": relative_error(y, bands64),
                     "log energies": relative_error(energies, energies64), "output": relative_error(out, out64)})
    for formulation in FUSED:
        with torch.no_grad():
            out = audio_frontend_stem.ext(wave, low, band, weight, log_eps=log_eps, formulation=formulation)
        rows.append({"formulation": f"cpp {formulation}", "bands": None, "log energies": None,
                     "output": relative_error(out, out64)})
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per formulation and batch (medians)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes to time")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    config = ModelConfig.small()
    params = stem_parameters(config)
    low, band, weight = params
    generator = torch.Generator().manual_seed(1)
    lines = [
        "# Audio front-end formulations (small model: 256 filters x 251 taps, 48000 samples, CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {options.threads} torch threads, torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f} at the start (the machine is shared: quote "
        "ratios within this run). Command: `python benchmarks/frontend_formulations.py "
        f"--repeats {options.repeats} --threads {options.threads} --batches {options.batches}`.",
        "",
        "## Time (median ms per clip; the whole op: pre-emphasis + norm + filters + |.| + log + mean + stem conv)",
        "",
    ]
    names = [f"cpp {f}" for f in FUSED] + ["torch direct"]
    names += [f"torch {name}" for name in formulations() if name != "direct"]
    table = ["| batch | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for batch in (int(b) for b in options.batches.split(",")):
        wave = signal("noise", batch, config.num_samples, generator).float()
        calls = {f"cpp {f}": lambda w=wave, f=f: audio_frontend_stem.ext(w, low, band, weight, formulation=f)
                 for f in FUSED}
        for name, bands in formulations().items():
            calls[f"torch {name}"] = lambda w=wave, b=bands: op_from_bands(b, w, low, band, weight, config.log_eps)
        with torch.no_grad():
            medians = time_interleaved(calls, options.repeats)
        cells = [f"{medians[name] / batch:.1f}" for name in names]
        ratios = [f"{medians[name] / medians['cpp direct']:.2f}x" for name in names]
        table.append(f"| {batch} | " + " | ".join(cells) + " |")
        table.append(f"| {batch}, vs cpp | " + " | ".join(ratios) + " |")
        print(table[-2], table[-1], sep="\n", flush=True)
    lines += table
    lines += ["", "## Error against float64 (batch 1; max |error| / max |reference|)", ""]
    for kind in ("noise", "bursts"):
        wave64 = signal(kind, 1, config.num_samples, generator)
        for log_eps in (config.log_eps, 1e-2):
            rows = errors(wave64, params, log_eps)
            yardstick = next(r for r in rows if r["formulation"] == "torch direct")
            lines += [f"### {kind}, log_eps {log_eps:g}", "",
                      "| formulation | bands | log energies | op output | output vs torch fp32 |",
                      "|---|---|---|---|---|"]
            for row in rows:
                ratio = row["output"] / yardstick["output"] if yardstick["output"] else float("nan")
                lines.append(f"| {row['formulation']} | {_cell(row['bands'])} | {_cell(row['log energies'])} | "
                             f"{_cell(row['output'])} | {ratio:.2f}x |")
                print(kind, log_eps, lines[-1], flush=True)
            lines.append("")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
