"""Run a sweep's variants one ``glnet fit`` subprocess each, resumably, or hand them to a cluster.

Why subprocesses: a variant that crashes (or leaks memory, or sets global torch state) must not
take the remaining variants with it. Each variant gets ``RUNS/NAME/`` holding the resolved config
(``sweep_config.yaml``), the fit's log (``fit.log``), Lightning's checkpoints and events, and
``status.json`` (``running`` / ``finished`` / ``failed`` with the tail of the log), which is what
makes a re-run skip finished variants and resume interrupted ones from their ``last.ckpt``.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .sweep_file import Sweep, Variant

__all__ = ["GridRunner", "DEFAULT_FIT_COMMAND", "STATUS_FILE", "read_status", "find_last_checkpoint",
           "glnet_command", "slurm_script", "variant_commands"]

STATUS_FILE = "status.json"
CONFIG_FILE = "sweep_config.yaml"
LOG_FILE = "fit.log"
ERROR_TAIL_LINES = 40

#: ``glnet fit`` without relying on the console script being on PATH; a module, not ``python -c``,
#: so that Lightning's DDP launcher can start the other ranks with the same command.
DEFAULT_FIT_COMMAND = (sys.executable, "-m", "glnet_lightning", "fit")


def read_status(run_dir: Path) -> dict[str, Any]:
    """The variant's status record, ``{}`` when it never ran (or the file is unreadable)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_status(run_dir: Path, **record: Any) -> None:
    """Write atomically so a kill mid-write never leaves a half record that reads as 'never ran'."""
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(run_dir / STATUS_FILE)


def find_last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``last*.ckpt`` below the run directory (Lightning may version it ``last-v1``)."""
    found = [p for p in run_dir.rglob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class GridRunner:
    """Runs variants in order; ``fit_command`` is the prefix of the fit call (tests inject a fake)."""

    sweep: Sweep
    runs_dir: Path
    extra: Mapping[str, Any]
    fit_command: Sequence[str] = DEFAULT_FIT_COMMAND
    echo: Callable[[str], None] = print

    def run_dir(self, variant: Variant) -> Path:
        return self.runs_dir / variant.name

    def command(self, variant: Variant, ckpt: Path | None = None) -> list[str]:
        run_dir = self.run_dir(variant)
        command = [*self.fit_command, "--config", str(run_dir / CONFIG_FILE),
                   "--trainer.default_root_dir", str(run_dir)]
        return command + (["--ckpt_path", str(ckpt)] if ckpt else [])

    def describe(self, variants: Sequence[Variant]) -> None:
        """``--dry-run``: each variant's command, overrides and resolved config; nothing is written."""
        for variant in variants:
            ckpt = find_last_checkpoint(self.run_dir(variant))
            state = read_status(self.run_dir(variant)).get("state", "new")
            self.echo(f"# {variant.name} ({variant.label}) [{state}{', resumes ' + str(ckpt) if ckpt else ''}]")
            self.echo(shlex.join(self.command(variant, ckpt)))
            self.echo(yaml.safe_dump({"overrides": {**self.extra, **variant.overrides}}, sort_keys=False,
                                     default_flow_style=None).rstrip())
            try:
                config = variant.config(self.extra)
            except (ValueError, OSError) as exc:
                self.echo(f"# ERROR {variant.name}: {exc}")
                continue
            self.echo(yaml.safe_dump({"config": config}, sort_keys=False, default_flow_style=None).rstrip())

    def run(self, variants: Sequence[Variant]) -> dict[str, str]:
        """Run each variant unless finished; returns ``{name: state}``. Failures do not stop the rest;
        a SIGTERM to the runner stops the sweep after the running variant has saved (``interrupted``)."""
        states = {}
        for variant in variants:
            states[variant.name] = self._run_one(variant)
            if states[variant.name] == "interrupted":
                break
        return states

    def _run_one(self, variant: Variant) -> str:
        run_dir = self.run_dir(variant)
        if read_status(run_dir).get("state") == "finished":
            self.echo(f"[sweep] {variant.name}: finished earlier, skipped")
            return "skipped"
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            config = variant.config(self.extra)
        except (ValueError, OSError) as exc:  # a bad override is this variant's failure, not the sweep's
            return self._failed(run_dir, variant, None, f"{type(exc).__name__}: {exc}", time.time())
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        ckpt = find_last_checkpoint(run_dir)
        command = self.command(variant, ckpt)
        self.echo(f"[sweep] {variant.name}: {'resuming from ' + str(ckpt) if ckpt else 'starting'}")
        started = time.time()
        _write_status(run_dir, state="running", command=command, started=started)
        with open(run_dir / LOG_FILE, "a") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code, terminated = _call_forwarding_sigterm(command, log)
        if terminated:
            _write_status(run_dir, state="interrupted", command=command, started=started, ended=time.time(),
                          returncode=code)
            self.echo(f"[sweep] {variant.name}: interrupted by SIGTERM; run the same command again to resume it")
            return "interrupted"
        if code != 0:
            return self._failed(run_dir, variant, command, _tail(run_dir / LOG_FILE), started, code)
        _write_status(run_dir, state="finished", command=command, started=started, ended=time.time(),
                      returncode=0)
        self.echo(f"[sweep] {variant.name}: finished in {time.time() - started:.0f}s")
        return "finished"

    def _failed(self, run_dir: Path, variant: Variant, command: list[str] | None, error: str,
                started: float, code: int | None = None) -> str:
        _write_status(run_dir, state="failed", command=command, started=started, ended=time.time(),
                      returncode=code, error=error)
        last = error.strip().splitlines()[-1] if error.strip() else f"exit code {code}"
        self.echo(f"[sweep] {variant.name}: FAILED ({last}); see {run_dir / LOG_FILE}")
        return "failed"


def _call_forwarding_sigterm(command: list[str], log) -> tuple[int, bool]:
    """Run ``command``; a SIGTERM to the runner (``kill``, a scheduler's pre-emption) is passed on to it.

    Why: without this the runner dies and the fit carries on orphaned, or is killed without its
    pre-emption checkpoint. The fit saves ``last.ckpt`` on SIGTERM; the runner then stops the sweep.
    Returns the exit code and whether a SIGTERM arrived.
    """
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    received = []

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        received.append(signum)
        proc.send_signal(signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = None
    try:
        code = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code, bool(received)


def glnet_command() -> list[str]:
    """``glnet`` of the installation running now, as an absolute path: its console script beside the
    interpreter (``.venv/bin/glnet``), else that interpreter with ``-m glnet_lightning``.

    Why: a cluster job's shell has neither our virtual environment activated nor our ``PATH``; a bare
    ``glnet`` or ``python3`` there is another Python, which has no ``glnet_lightning``.
    """
    script = Path(sys.executable).parent / "glnet"
    if script.is_file():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "glnet_lightning"]


def _grid_argv(sweep: Sweep, runs_dir: Path, extra_args: Sequence[str]) -> list[str]:
    """The runner command (before ``--only NAME``): a cluster task keeps skip/resume/status too."""
    return [*glnet_command(), "sweep", "grid", str(sweep.path), "--runs", str(runs_dir), *extra_args]


def variant_commands(sweep: Sweep, variants: Sequence[Variant], runs_dir: Path,
                     extra_args: Sequence[str]) -> list[str]:
    """``--emit commands``: one shell line per variant."""
    return [shlex.join([*_grid_argv(sweep, runs_dir, extra_args), "--only", v.name]) for v in variants]


def slurm_script(sweep: Sweep, variants: Sequence[Variant], runs_dir: Path, extra_args: Sequence[str]) -> str:
    """``--emit slurm``: an array job, task i runs variant i; edit the #SBATCH resources to taste."""
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=glnet-{sweep.path.stem}",
        f"#SBATCH --array=0-{len(variants) - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --time=72:00:00",
        f"#SBATCH --output={runs_dir}/slurm-%A_%a.out",
        "#SBATCH --requeue",
        "# Submit from the repository after 'mkdir -p RUNS' (SLURM opens --output before the job starts).",
        "# Requeueing is safe: the runner resumes from RUNS/NAME/**/last.ckpt and skips finished variants.",
        "set -euo pipefail",
        f"NAMES=({' '.join(v.name for v in variants)})",
        'NAME="${NAMES[$SLURM_ARRAY_TASK_ID]}"',
        f'{shlex.join(_grid_argv(sweep, runs_dir, extra_args))} --only "$NAME"',
        "",
    ])
