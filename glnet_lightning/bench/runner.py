"""Orchestration: build every model per image size, probe memory, time, derive figures.

Returns plain dataclasses so the CLI can print them and dump them to JSON
without knowing how they were measured.
"""
from __future__ import annotations

import gc
import math
import sys
from dataclasses import dataclass, field

import torch

from .cost import count_cost
from .errors import BenchError
from .flops import count_macs
from .memory import MemoryFigure, MemoryJob, measure_memory
from .spec import ModelSpec, build_model, check_model_names
from .timing import GemmPeak, Throughput, gemm_peak, run_interleaved, time_call
from .workload import MODES, check_precision, make_batch, make_step, prepare_model


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark invocation (checked by :func:`validate` before anything runs)."""

    specs: list[ModelSpec]
    img_sizes: list[int]
    batch_size: int = 16
    precision: str = "fp32"
    mode: str = "infer"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile(mode=...) for every model alike
    freezing: bool = False  # inductor freezing: weights as constants, so GEMM epilogues and weight packing fold in
    warmup: int = 3
    repeats: int = 10
    num_classes: int = 1000
    gemm_size: int = 2048
    probe_memory: bool = True
    conv_precision: str = "auto"  # GLNet's convs under CPU autocast (models.layers.CPU_CONV_PRECISIONS)
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Row:
    """Figures of one model at one image size (compiled figures when --compile)."""

    model: str
    img_size: int
    params: int
    macs: int  # forward MACs per image
    step_macs: int  # MACs per image of the timed step: forward, plus backward in train mode
    throughput: Throughput
    times_s: list[float]
    memory: MemoryFigure | None = None
    ratio: float = 1.0
    gemm_fraction: float = 0.0
    eager: Throughput | None = None
    compile_speedup: float | None = None
    compile_seconds: float | None = None  # first call of the compiled step: tracing, codegen and one run


@dataclass
class Scaling:
    """Log-log slopes of batch time and working memory against the pixel count."""

    model: str
    img_sizes: list[int]
    time_exponent: float | None
    memory_exponent: float | None


@dataclass
class BenchResult:
    """All rows of a run plus the reference peak and anything the reader should be warned about."""

    config: BenchConfig
    gemm_peak: GemmPeak
    threads: int
    rows: list[Row] = field(default_factory=list)
    scaling: list[Scaling] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validate(config: BenchConfig) -> None:
    """Reject impossible settings before any model is built."""
    positive = {"--batch-size": config.batch_size, "--repeats": config.repeats,
                "--gemm-size": config.gemm_size}
    positive.update({"--img-size": size for size in config.img_sizes})
    for flag, value in positive.items():
        if value < 1:
            raise BenchError(f"{flag} must be >= 1, got {value}")
    if config.warmup < (1 if config.compile else 0):
        raise BenchError("--warmup must be >= 0 (>= 1 with --compile, to keep compilation out of the timings)")
    if config.freezing and not (config.compile and config.mode == "infer"):
        raise BenchError("--freezing applies to compiled inference only: add --compile and use --mode infer")
    if config.mode not in MODES:
        raise BenchError(f"unknown mode {config.mode!r}; choose from {', '.join(MODES)}")
    if config.mode == "train" and config.num_classes < 1:
        raise BenchError("--mode train needs --num-classes >= 1 (cross-entropy on the logits)")
    if len(set(config.img_sizes)) != len(config.img_sizes):
        raise BenchError("--img-size values must be distinct")
    if len({spec.text for spec in config.specs}) != len(config.specs):
        raise BenchError("each MODEL may be given only once")
    check_precision(config.precision, torch.device(config.device))
    check_model_names(config.specs)


def log_log_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); exact for two points, None if undefined."""
    if len(xs) < 2 or min(xs) <= 0 or min(ys) <= 0:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    spread = sum((x - mx) ** 2 for x in lx)
    if spread == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / spread


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _memory_job(config: BenchConfig, spec: ModelSpec, img_size: int) -> MemoryJob:
    return MemoryJob(spec=spec, img_size=img_size, batch_size=config.batch_size, mode=config.mode,
                     precision=config.precision, channels_last=config.channels_last,
                     num_classes=config.num_classes, threads=torch.get_num_threads(), device=config.device)


def _counts(model, spec: ModelSpec, img_size: int, mode: str) -> tuple[int, int, int]:
    """Parameters, forward MACs (``cost.count_cost``, as every other tool) and the MACs a timed step
    executes (fwd+bwd in train)."""
    try:
        params, macs = count_cost(model, img_size)
        step_macs = count_macs(model, (3, img_size, img_size), backward=True) if mode == "train" else macs
    except Exception as exc:
        raise BenchError(f"{spec.text} at {img_size}px failed: {type(exc).__name__}: {exc}") from exc
    return params, macs, step_macs


def _size_rows(config: BenchConfig, img_size: int) -> list[Row]:
    """Build all models for one size, time them interleaved, return their rows."""
    from torch._inductor import config as inductor_config  # imported only when a bench runs: it is heavy

    if config.compile:
        # dynamo reuses code compiled earlier in this process for another instance of the same model
        # class (notebooks, tests, several sizes): start fresh, so "compile s" times a real compile
        # and --freezing reaches inductor
        import torch._dynamo

        torch._dynamo.reset()
    # inductor reads freezing when it compiles (each model's first call): scoped to this run, not left set
    with inductor_config.patch(freezing=config.freezing):
        return _time_size(config, img_size)


def _time_size(config: BenchConfig, img_size: int) -> list[Row]:
    device = torch.device(config.device)
    images, labels = make_batch(config.batch_size, img_size, config.num_classes, device, config.channels_last)
    counts, steps = [], []
    for spec in config.specs:
        model = prepare_model(build_model(spec, img_size, config.num_classes), config.mode, device,
                              config.channels_last)
        counts.append(_counts(model, spec, img_size, config.mode))
        variants = [model, torch.compile(model, mode=config.compile_mode)] if config.compile else [model]
        steps.extend(make_step(m, images, labels, config.mode, config.precision, device) for m in variants)
    compile_seconds = {}
    if config.compile:  # the first call compiles: timed on its own, outside warm-up and steady state
        for index, spec in enumerate(config.specs):
            _progress(f"compiling {spec.text} at {img_size}px ({config.mode}, mode={config.compile_mode}"
                      f"{', freezing' if config.freezing else ''})")
            try:
                compile_seconds[spec.text] = time_call(steps[2 * index + 1], device)
            except Exception as exc:
                raise BenchError(f"compiling {spec.text} at {img_size}px failed: {type(exc).__name__}: {exc}") from exc
    _progress(f"timing {len(config.specs)} model(s) at {img_size}px")
    try:
        times = run_interleaved(steps, config.warmup, config.repeats, device)
    except Exception as exc:
        raise BenchError(f"running at {img_size}px failed: {type(exc).__name__}: {exc}") from exc
    per_model = len(steps) // len(config.specs)
    rows = []
    for index, (spec, (params, macs, step_macs)) in enumerate(zip(config.specs, counts)):
        eager_times, *compiled = times[index * per_model:(index + 1) * per_model]
        measured = compiled[0] if compiled else eager_times
        row = Row(model=spec.text, img_size=img_size, params=params, macs=macs, step_macs=step_macs,
                  throughput=Throughput.from_times(measured, config.batch_size), times_s=measured)
        if compiled:
            row.eager = Throughput.from_times(eager_times, config.batch_size)
            row.compile_speedup = row.throughput.median / row.eager.median
            row.compile_seconds = compile_seconds[spec.text]
        rows.append(row)
    return rows


def _derive(result: BenchResult) -> None:
    """Fill ratios, GEMM fractions and scaling exponents from the raw rows."""
    first = {}
    for row in result.rows:
        base = first.setdefault(row.img_size, row)
        row.ratio = row.throughput.median / base.throughput.median
        row.gemm_fraction = 2 * row.step_macs * row.throughput.median / result.gemm_peak.flops
    if any(row.gemm_fraction > 1 for row in result.rows):
        result.warnings.append("GEMM% above 100%: the square-matmul reference is not a true peak for "
                               f"{result.config.precision} on this machine (small ops run faster per FLOP)")
    if len(result.config.img_sizes) < 2:
        return
    for spec in result.config.specs:
        rows = sorted((r for r in result.rows if r.model == spec.text), key=lambda r: r.img_size)
        pixels = [r.img_size ** 2 for r in rows]
        memory = [r.memory.working_bytes for r in rows] if all(r.memory for r in rows) else []
        result.scaling.append(Scaling(
            model=spec.text, img_sizes=[r.img_size for r in rows],
            time_exponent=log_log_slope(pixels, [r.throughput.ms_per_batch for r in rows]),
            memory_exponent=log_log_slope(pixels, memory) if memory else None))


def run_benchmark(config: BenchConfig) -> BenchResult:
    """Measure every model at every size; raises :class:`BenchError` on user-facing problems."""
    validate(config)
    memory = {}
    if config.probe_memory:
        for img_size in config.img_sizes:
            for spec in config.specs:
                _progress(f"memory probe {spec.text} at {img_size}px")
                memory[spec.text, img_size] = measure_memory(_memory_job(config, spec, img_size))
    _progress(f"GEMM peak (square matmuls up to {config.gemm_size}, {config.precision})")
    peak = gemm_peak(config.gemm_size, config.precision, torch.device(config.device))
    result = BenchResult(config=config, gemm_peak=peak, threads=torch.get_num_threads())
    for img_size in config.img_sizes:
        rows = _size_rows(config, img_size)
        for row in rows:
            row.memory = memory.get((row.model, img_size))
        result.rows.extend(rows)
        gc.collect()
    _derive(result)
    return result
