"""Human-readable tables and the JSON record of a benchmark run."""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from pathlib import Path

import timm
import torch

from glnet_lightning.models import layers

from .memory import CPU_METHOD, CUDA_METHOD
from .runner import BenchResult, Row

MB = 2 ** 20


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain fixed-width table: first column left-aligned, the numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def cpu_model() -> str:
    """CPU model from /proc/cpuinfo, falling back to platform.processor()."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for entry in cpuinfo:
                if entry.startswith("model name"):
                    return entry.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: /proc/cpuinfo flags that decide which kernels run: vector width, native bf16 / fp16, AMX tiles.
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_core", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                      "amx_bf16", "amx_int8", "amx_fp16")


def cpu_flags() -> list[str]:
    """The :data:`RELEVANT_CPU_FLAGS` this CPU reports (empty where /proc/cpuinfo is not available)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((entry.split(":", 1)[1].split() for entry in cpuinfo if entry.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in RELEVANT_CPU_FLAGS if flag in flags]


def cpu_conv_path(cfg) -> str:
    """Which precision GLNet's convolutions ran in, and why (only CPU autocast has a choice)."""
    if cfg.device.startswith("cuda") or cfg.precision == "fp32":
        return "as the model's precision"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    ran = str(layers.cpu_conv_dtype(dtype, cfg.conv_precision)).replace("torch.", "")
    if cfg.conv_precision != "auto":
        return f"{ran} (forced: --conv-precision {cfg.conv_precision})"
    native = dtype in layers._NATIVE_CPU_CONV_DTYPES
    return f"{ran} ({'native' if native else 'no native'} {cfg.precision} convolution in oneDNN on this CPU)"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_model()


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _row_cells(row: Row, with_compile: bool) -> list[str]:
    tp = row.throughput
    cells = [row.model, str(row.img_size), f"{tp.median:.1f}", f"{tp.min:.1f}-{tp.max:.1f}",
             f"{tp.ms_per_batch:.1f}", _fmt(row.memory and row.memory.peak_bytes / MB, ".0f"),
             f"{row.params / 1e6:.2f}", f"{row.macs / 1e9:.3f}", f"{row.ratio:.2f}",
             f"{100 * row.gemm_fraction:.1f}%"]
    if with_compile:
        cells += [_fmt(row.compile_speedup, ".2f", "x"), _fmt(row.compile_seconds, ".1f")]
    return cells


def header_lines(result: BenchResult) -> list[str]:
    """What was run and what each column means, printed above the table."""
    cfg = result.config
    default = CUDA_METHOD if cfg.device.startswith("cuda") else CPU_METHOD
    memory = next((row.memory.method for row in result.rows if row.memory), default)
    train_note = " (train: forward+backward MACs)" if cfg.mode == "train" else ""
    return [
        f"glnet bench: mode={cfg.mode} precision={cfg.precision} batch={cfg.batch_size} "
        f"device={cfg.device} ({device_name(cfg.device)}) threads={result.threads} "
        f"channels_last={'yes' if cfg.channels_last else 'no'} compile={'yes' if cfg.compile else 'no'} "
        f"torch={torch.__version__}",
        f"cpu: {cpu_model()}; flags: {' '.join(cpu_flags()) or 'none of ' + '/'.join(RELEVANT_CPU_FLAGS[:3])}; "
        f"torch cpu capability {torch.backends.cpu.get_cpu_capability()}; convs: {cpu_conv_path(cfg)}",
        f"GEMM peak: {result.gemm_peak.flops / 1e9:.1f} GFLOP/s at {cfg.precision}, best square matmul "
        f"(side {result.gemm_peak.size}; sides doubled up to {cfg.gemm_size}, median of 3 each)",
        f"im/s: median and min-max over {cfg.repeats} interleaved repeats after {cfg.warmup} warm-up; "
        f"ratio: im/s vs the first model at the same size",
        f"GMACs: forward multiply-accumulates per image (FlopCounterMode FLOPs / 2); "
        f"GEMM%: 2*MACs*im/s / GEMM peak{train_note}",
        f"peak MB: {memory}" if cfg.probe_memory else "peak MB: not measured (--no-memory)",
        *([f"compile: figures are the torch.compile'd model's (mode={cfg.compile_mode}"
           f"{', inductor freezing' if cfg.freezing else ''}); compile = its im/s / "
           "eager im/s (both timed in the same interleaved rounds); compile s = its first call (tracing, "
           "code generation and one step), before warm-up"] if cfg.compile else []),
        *(f"warning: {w}" for w in result.warnings),
    ]


def render(result: BenchResult) -> str:
    """The full text report: header, main table and, for several sizes, the scaling table."""
    with_compile = result.config.compile
    headers = ["model", "img", "im/s", "min-max", "ms/batch", "peak MB", "params M", "GMACs",
               "ratio", "GEMM%"] + (["compile", "compile s"] if with_compile else [])
    parts = ["\n".join(header_lines(result)), "",
             format_table(headers, [_row_cells(row, with_compile) for row in result.rows])]
    if result.scaling:
        sizes = ", ".join(str(s) for s in result.config.img_sizes)
        parts += ["", f"scaling with pixel count (log-log least-squares slope over sizes {sizes}; "
                      f"memory = peak minus the built model):",
                  format_table(["model", "time exp", "memory exp"],
                               [[s.model, _fmt(s.time_exponent), _fmt(s.memory_exponent)]
                                for s in result.scaling])]
    return "\n".join(parts)


def _row_record(row: Row) -> dict:
    record = dataclasses.asdict(row)
    record["memory"] = None if row.memory is None else {
        "peak_bytes": row.memory.peak_bytes, "model_bytes": row.memory.model_bytes,
        "working_bytes": row.memory.working_bytes, "method": row.memory.method}
    record["gmacs"] = row.macs / 1e9
    record["params_m"] = row.params / 1e6
    return record


def to_record(result: BenchResult, argv: list[str]) -> dict:
    """Everything measured plus enough context (command, versions, machine) to compare runs later."""
    cfg = result.config
    return {
        "command": " ".join(["glnet", "bench", *argv]),
        "argv": list(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "threads": result.threads,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "conv_path": cpu_conv_path(cfg), "device": device_name(cfg.device)},
        "settings": dataclasses.asdict(cfg),
        "gemm_peak": {"flops_per_s": result.gemm_peak.flops, "size": result.gemm_peak.size,
                      "max_size": cfg.gemm_size, "precision": cfg.precision},
        "results": [_row_record(row) for row in result.rows],
        "scaling": [dataclasses.asdict(s) for s in result.scaling],
        "warnings": result.warnings,
    }


def write_json(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
