"""Peak memory of one model/size, probed in a fresh process per measurement.

In the benchmark process all models share one allocator, so freed blocks of
model A would hide part of model B's peak. Each probe therefore runs in its own
child forked from a ``forkserver`` that has only imported torch and timm (so no
thread pool or CUDA context is inherited and the fork is cheap).

CPU: growth of the peak resident set (``VmHWM``, reset via
``/proc/self/clear_refs`` once the child has started) over its resident set
before the model was built: weights, optimizer state, activations and whatever
the allocator keeps cached. CUDA: ``torch.cuda.max_memory_allocated`` in the
fresh child (the allocator starts empty, so this also includes the weights).
Both run two eager steps, so the training figure includes AdamW state.
"""
from __future__ import annotations

import multiprocessing
import resource
from dataclasses import dataclass

import torch

from .errors import BenchError
from .spec import ModelSpec, build_model
from .workload import make_batch, make_step, prepare_model

CPU_METHOD = ("peak RSS growth (VmHWM) of a fresh process over its RSS before the model was built, "
              "2 eager steps: weights + optimizer state + activations + allocator cache")
CUDA_METHOD = "torch.cuda.max_memory_allocated in a fresh process, 2 eager steps (includes weights)"
_FALLBACK_METHOD = "ru_maxrss growth of a fresh process (may include start-up peaks), 2 eager steps"
_PRELOAD = ["torch", "timm"]


@dataclass(frozen=True)
class MemoryJob:
    """Everything a child needs to rebuild and run the workload on its own."""

    spec: ModelSpec
    img_size: int
    batch_size: int
    mode: str
    precision: str
    channels_last: bool
    num_classes: int
    threads: int
    device: str


@dataclass(frozen=True)
class MemoryFigure:
    """Peak bytes of the step and the part already taken by the built model."""

    peak_bytes: int
    model_bytes: int
    method: str

    @property
    def working_bytes(self) -> int:
        """Peak minus the model itself: what grows with the image size."""
        return max(self.peak_bytes - self.model_bytes, 0)


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Make VmHWM restart from the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _proc_status_bytes("VmHWM")
        return True
    except OSError:
        return False


class _CpuMeter:
    """Resident-set readings relative to the moment the meter was created."""

    def __init__(self) -> None:
        self.precise = _reset_peak_rss()
        self.method = CPU_METHOD if self.precise else _FALLBACK_METHOD
        self.start = self.current()

    def current(self) -> int:
        if self.precise:
            return _proc_status_bytes("VmRSS")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        return _proc_status_bytes("VmHWM") if self.precise else self.current()


class _CudaMeter:
    """CUDA allocator readings; the fresh process starts at zero."""

    method = CUDA_METHOD

    def __init__(self) -> None:
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()

    def current(self) -> int:
        return torch.cuda.memory_allocated()

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def _measure(job: MemoryJob) -> MemoryFigure:
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    meter = _CudaMeter() if device.type == "cuda" else _CpuMeter()
    model = prepare_model(build_model(job.spec, job.img_size, job.num_classes), job.mode, device,
                          job.channels_last)
    model_bytes = meter.current() - meter.start
    images, labels = make_batch(job.batch_size, job.img_size, job.num_classes, device, job.channels_last)
    step = make_step(model, images, labels, job.mode, job.precision, device)
    step()
    step()
    return MemoryFigure(peak_bytes=meter.peak() - meter.start, model_bytes=model_bytes, method=meter.method)


def _child(job: MemoryJob, connection) -> None:
    try:
        connection.send(("ok", _measure(job)))
    except BaseException as exc:  # report, don't die silently: the parent raises it
        message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        connection.send(("error", message))
    finally:
        connection.close()


def measure_memory(job: MemoryJob) -> MemoryFigure:
    """Run one probe in a fresh child process and return its figure."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(job, sender), daemon=True)
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", "probe process died"
    finally:
        receiver.close()
        process.join()
    if status != "ok":
        raise BenchError(f"{job.spec.text} at {job.img_size}px failed in the memory probe: {payload}")
    return payload
