"""Every command of the README, run by a test as the README writes it, where the README says it runs.

What a command is (:func:`readme_commands`): each line of a ```bash block (``\\`` continuations joined,
comments dropped, so ``#!`` and ``#SBATCH`` lines too; ``a && b`` is two commands), and each inline code
span of the prose that starts with a program the README has a newcomer run (``glnet``, ``lightning``,
``tensorboard``, ``source``, ``conda``, ``pip``), gives it an option or an argument (a span of command words
only, ``glnet bench`` or ``pip install``, names a command) and holds no placeholder: a word in capitals
(``MODEL``, ``N``), ``|`` alternatives or ``...``.

:data:`README_COMMANDS` maps each command to the test that runs it; :func:`test_every_readme_command_is_run_by_a_test`
fails when the README has a command the table lacks, or the table one the README lost. Tests here run a
command through :func:`run`, which refuses text that is not (any more) a README command.

How a command runs here: in this process, through the console script's own function (``glnet`` ->
``cli.main.main``, ``lightning`` -> ``lightning_main``), from a folder laid out like the repository's root
(``readme_dir``). Changed are only
- the README machine's paths: ``/data/imagenet`` and ``/data/my_classes`` are the ``imagenet_tree`` fixture,
  ``/fast/`` and ``/shared/`` folders of the test, ``postgresql://...@db-host/optuna`` the ``postgres_url`` server,
  the published ``glnet_4g.pth`` a file of its keys and shapes (random values), and the ``fit`` checkpoint the
  export reads the session's ``fit_checkpoint`` (exporting the full-size GLNet-4G takes 100 s);
- what the README itself states: the CPU override of its GPU recipes (:func:`readme_cpu_override`), in a sweep its
  ``--set`` form (the README's rule: ``--KEY VALUE`` is ``--set KEY=VALUE``);
- size: fewer steps, epochs, trials and rows, smaller batches and images (never the network). Where a full run
  is still too costly (the 15 rows of a grid), the command's own check runs (``--dry-run``); a GPU recipe run as
  written stops on this machine with one line naming the README's override
  (:func:`test_gpu_recipes_stop_in_one_line_naming_the_readme_override`).
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from glnet_lightning.cli.main import lightning_main, main as glnet_main
from glnet_lightning.models import convert_official_state_dict
from testkit import CPU_OVERRIDES, REPO, fit_args, one_error_line, published_state_dict, same, scalars, set_args
from testkit.plugin import required

README = REPO / "README.md"
HERE = "tests/e2e/test_readme_commands.py::"
SETUP = "tests/e2e/test_readme_setup.py::test_setup_makes_a_venv_from_an_externally_managed_system_python"

#: command -> the test (path::function) that runs it.
README_COMMANDS = {
    # Two commands
    "bash scripts/setup.sh": SETUP,
    ".venv/bin/python -m pytest": SETUP,  # the new venv runs pytest; the whole suite is CI's own run
    ".venv/bin/lightning fit --config configs/fashion_mnist.yaml": HERE + "test_fashion_mnist_commands",
    "source .venv/bin/activate": HERE + "test_set_up_commands",
    "conda env create -f environment.yml": HERE + "test_set_up_commands",
    # Models: published or trained weights, deployment
    "glnet validate --config configs/imagenet_glnet_4g.yaml --data.root /data/imagenet "
    "--model.init_weights glnet_4g.pth":
        HERE + "test_published_weights_validate_then_fine_tune",
    "glnet fit --config configs/imagenet_glnet_4g.yaml --data.root /data/my_classes --model.init_weights glnet_4g.pth":
        HERE + "test_published_weights_validate_then_fine_tune",
    "glnet export runs/glnet_4g/checkpoints/best.ckpt --format onnx --out glnet_4g.onnx": HERE + "test_export",
    # Training
    "glnet --help": HERE + "test_help_lists_every_readme_command",
    "glnet fit --config configs/fashion_mnist.yaml": HERE + "test_fashion_mnist_commands",
    "glnet fit --config configs/fashion_mnist.yaml --ckpt_path last": HERE + "test_fashion_mnist_commands",
    "lightning fit --config configs/fashion_mnist.yaml": HERE + "test_fashion_mnist_commands",
    "tensorboard --logdir runs/": HERE + "test_fashion_mnist_commands",
    "glnet fit --config configs/imagenet_glnet_stl.yaml --data.root /data/imagenet": HERE + "test_imagenet_fits",
    "glnet data prepare --root /data/imagenet --output /fast/imagenet_shards": HERE + "test_imagenet_fits",
    "pip install 'glnet-lightning[streaming]'": HERE + "test_set_up_commands",
    "glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet": HERE + "test_imagenet_fits",
    "glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet --data.batch_size 128 "
    "--trainer.accumulate_grad_batches 16": HERE + "test_imagenet_fits",
    "glnet fit --config configs/imagenet_glnet_4g_tklb.yaml --data.root /data/imagenet "
    "--data.token_labels /data/label_top5_train_nfnet": HERE + "test_token_labeling_commands",
    "glnet validate --config configs/imagenet_glnet_4g_tklb.yaml --data.root /data/imagenet "
    "--model.init_weights glnet_4g_tklb.pth": HERE + "test_token_labeling_commands",
    # Semantic segmentation
    "glnet fit --config configs/ade20k_glnet_4g_semfpn.yaml --data.root /data/ADEChallengeData2016 "
    "--model.init_weights glnet_4g.pth": HERE + "test_segmentation_commands",
    "glnet fit --config configs/ade20k_glnet_4g_semfpn.yaml --data.root /data/ADEChallengeData2016 "
    "--model.init_weights glnet_4g.pth --trainer.devices 1 --trainer.strategy auto --trainer.accumulate_grad_batches 8":
        HERE + "test_segmentation_commands",
    "glnet fit --config configs/fashion_scenes_seg.yaml": HERE + "test_segmentation_commands",
    "glnet predict --config configs/fashion_scenes_seg.yaml --ckpt_path runs/fashion_scenes_seg/checkpoints/best.ckpt":
        HERE + "test_segmentation_commands",
    "glnet export runs/fashion_scenes_seg/checkpoints/best.ckpt --format onnx --out fashion_scenes_seg.onnx":
        HERE + "test_segmentation_commands",
    "pip install 'glnet-lightning[dense]'": HERE + "test_set_up_commands",
    # Detection and instance segmentation
    "glnet fit --config configs/coco_glnet_4g_maskrcnn_1x.yaml --data.root /data/coco --model.init_weights glnet_4g.pth":
        HERE + "test_detection_commands",
    "glnet fit --config configs/coco_glnet_4g_maskrcnn_1x.yaml --data.root /data/coco --model.init_weights glnet_4g.pth "
    "--trainer.devices 1 --trainer.strategy auto --trainer.accumulate_grad_batches 8": HERE + "test_detection_commands",
    "glnet fit --config configs/fashion_scenes_det.yaml": HERE + "test_detection_commands",
    "glnet predict --config configs/fashion_scenes_det.yaml --ckpt_path runs/fashion_scenes_det/checkpoints/best.ckpt":
        HERE + "test_detection_commands",
    "glnet bench glnet_stl glnet_4g --head upernet": HERE + "test_dense_bench_command",
    # Notebooks and slot figures
    "glnet viz runs/fashion_mnist/checkpoints/best.ckpt --out figures/": HERE + "test_fashion_mnist_commands",
    "pip install 'glnet-lightning[analysis]'": HERE + "test_set_up_commands",
    # Ablations and sweeps
    "glnet sweep grid sweeps/ablation_stl.yaml --dry-run": HERE + "test_ablation_grid_commands",
    "glnet sweep grid sweeps/ablation_fashion_mnist.yaml --runs runs/abl": HERE + "test_ablation_grid_commands",
    "glnet sweep grid sweeps/ablation_stl.yaml --emit slurm --set data.root=/data/imagenet":
        HERE + "test_ablation_grid_commands",
    "glnet sweep grid sweeps/ablation_stl.yaml --set data.root=/data/imagenet --only stl slots_9":
        HERE + "test_ablation_grid_commands",
    "glnet ablation table sweeps/ablation_fashion_mnist.yaml --runs runs/abl --img-size 32 --num-classes 10":
        HERE + "test_ablation_grid_commands",
    "glnet sweep optuna sweeps/optuna_slots_kernel.yaml --n-trials 20": HERE + "test_optuna_fashion_mnist_commands",
    "glnet sweep report --storage sqlite:///runs/sweeps/slots_kernel_fashion_mnist/study.db":
        HERE + "test_optuna_fashion_mnist_commands",
    # Sweeps on many machines
    "pip install 'glnet-lightning[sweeps]'": HERE + "test_set_up_commands",
    "glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage postgresql://optuna:PW@db-host/optuna "
    "--set data.root=/data/imagenet --n-trials 3": HERE + "test_shared_study_commands",
    "glnet sweep report --storage postgresql://optuna:PW@db-host/optuna --study-name slots_kernel_imagenet_stl":
        HERE + "test_shared_study_commands",
    ".venv/bin/glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage "
    "journal:/shared/runs/slots_kernel_imagenet.journal --set data.root=/data/imagenet --n-trials 3":
        HERE + "test_shared_study_commands",
    # Benchmarks, Contributing
    "glnet bench --help": HERE + "test_help_lists_every_readme_command",
    '.venv/bin/python -m pytest -m "not slow"': HERE + "test_the_test_suite_commands",
}

#: The programs whose inline code spans are commands.
_INLINE_PROGRAM = re.compile(r"(glnet|lightning|tensorboard|source|conda|pip) ")
_COMMAND_WORD = re.compile(r"[a-z][a-z0-9_-]*")  # a (sub-)command's name: bench, install, prepare
_PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]*\b|\||\.\.\.")
#: Options of the GPU recipes that make them run on a CPU, as the README states them.
_CPU_SENTENCE = re.compile(r"on a machine without a GPU add `(--trainer\.accelerator [^`]+)`")

#: Steps and sizes of a README run on Fashion-MNIST (the network stays the config's).
FASHION_STEPS = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 4, "trainer.limit_val_batches": 2,
                 "trainer.limit_test_batches": 2, "trainer.log_every_n_steps": 1,
                 "trainer.enable_progress_bar": False, "data.batch_size": 32, "data.num_workers": 0}
#: Steps and sizes of a README run of an ImageNet config: testkit's CPU overrides without the hardware
#: (the README's own override gives that), one batch each of 32 px images.
_HARDWARE = ("trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.precision")
IMAGENET_STEPS = {**{k: v for k, v in CPU_OVERRIDES.items() if k not in _HARDWARE},
                  "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1, "data.image_size": 32}
#: What a training step changes in a network besides its weights.
BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------------------------ the README's commands
def readme_commands(text: str | None = None) -> list[str]:
    """The commands of the README (or of ``text``), whitespace collapsed: bash blocks first, then the prose."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        named_only = all(_COMMAND_WORD.fullmatch(word) for word in span.split())
        if _INLINE_PROGRAM.match(span) and not named_only and not _PLACEHOLDER.search(span):
            commands.append(span)
    return list(dict.fromkeys(commands))


def readme_cpu_override() -> list[str]:
    """The options the README tells a user without a GPU to add to its ImageNet commands."""
    found = _CPU_SENTENCE.findall(" ".join(README.read_text().split()))
    assert len(found) == 1, "the README no longer states its CPU override once (`on a machine without a GPU add ...`)"
    return found[0].split()


def as_sets(options: list[str]) -> list[str]:
    """``--KEY VALUE`` pairs in the ``--set KEY=VALUE`` form of the sweep commands (the README's rule)."""
    pairs = zip(options[::2], options[1::2])
    return [arg for key, value in pairs for arg in ("--set", f"{key.removeprefix('--')}={value}")]


def run(capsys, command: str, *extra: str, where: dict[str, str] | None = None,
        instead: tuple[str, str] | None = None) -> tuple[int, str, str]:
    """The README's ``command`` in this process, as its console script runs it: split as a shell splits it,
    the README machine's paths replaced by this one's (``where``), ``extra`` appended; (exit code, stdout, stderr).
    ``instead``: (part of the command, the README's text to use in its place)."""
    assert command in readme_commands(), f"not a command of the README (any more): {command}"
    if instead is not None:
        assert instead[0] in command and " ".join(instead[1].split()) in " ".join(README.read_text().split())
        command = command.replace(*instead)
    words = shlex.split(command)
    for old, new in (where or {}).items():
        words = [word.replace(old, new) for word in words]
    entry = {"glnet": glnet_main, "lightning": lightning_main}[Path(words[0]).name]
    capsys.readouterr()
    code = entry([*words[1:], *extra])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, command: str, *extra: str, **how) -> str:
    """:func:`run` that must succeed; its stdout."""
    code, out, err = run(capsys, command, *extra, **how)
    assert code == 0, f"{command} {' '.join(extra)} -> {code}\n{out[-2000:]}\n{err[-4000:]}"
    return out


@pytest.fixture(autouse=True)
def _no_process_group_left():
    """The README's CPU override keeps the ImageNet configs' DDP strategy: Lightning then makes a one-process
    group in this process and exports MASTER_ADDR and the like. Neither may leak into later tests."""
    environment = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


@pytest.fixture
def readme_dir(tmp_path, monkeypatch) -> Path:
    """A folder like the repository's root for the README's relative paths: configs/ and sweeps/ linked,
    runs/ and every output written here."""
    for name in ("configs", "sweeps"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def machine(readme_dir, imagenet_tree) -> dict[str, str]:
    """The README machine's paths -> this one's."""
    return {"/data/imagenet": str(imagenet_tree), "/data/my_classes": str(imagenet_tree),
            "/fast/": f"{readme_dir}/fast/", "/shared/": f"{readme_dir}/shared/"}


# ------------------------------------------------------------------------------------ the rule itself
def test_every_readme_command_is_run_by_a_test():
    """The README and the tests drift apart: a command added, changed or dropped in one and not the other."""
    found = readme_commands()
    assert set(found) == set(README_COMMANDS), (
        f"README commands no test runs: {sorted(set(found) - set(README_COMMANDS))}; "
        f"table entries the README lost: {sorted(set(README_COMMANDS) - set(found))}")
    paths = {test.split("::")[0] for test in README_COMMANDS.values()}
    parsed = {path: ast.parse((REPO / path).read_text()) for path in paths}
    for command, test in README_COMMANDS.items():
        path, function = test.split("::")
        functions = {node.name: node for node in ast.walk(parsed[path]) if isinstance(node, ast.FunctionDef)}
        assert function in functions, f"{test} does not exist"
        if path == HERE.removesuffix("::"):  # the test here names the command it runs
            texts = {" ".join(node.value.split()) for node in ast.walk(functions[function])
                     if isinstance(node, ast.Constant) and isinstance(node.value, str)}
            assert command in texts, f"{test} does not run {command!r}"


def test_commands_are_read_from_bash_blocks_and_prose():
    text = "\n".join([
        "Run `glnet fit --config a.yaml`, not `glnet bench MODEL [MODEL ...]`, `glnet fit|validate`, `glnet bench`,",
        "`pip install` or `--data.root`; `pip install 'x[y]'` and `glnet data prepare --root",
        "/data --output /out` are commands.",
        "```bash",
        "#!/bin/bash",
        "#SBATCH --array=0-6",
        "# a comment",
        "glnet sweep grid s.yaml \\",
        "    --set a=1 --dry-run   # what it does",
        'bash scripts/setup.sh && .venv/bin/python -m pytest -m "not slow"',
        "glnet fit --config a.yaml",
        "```",
        "```python",
        "model = create('glnet stl')",
        "```",
    ])
    assert readme_commands(text) == [
        "glnet sweep grid s.yaml --set a=1 --dry-run", "bash scripts/setup.sh",
        '.venv/bin/python -m pytest -m "not slow"', "glnet fit --config a.yaml", "pip install 'x[y]'",
        "glnet data prepare --root /data --output /out",
    ]


# ------------------------------------------------------------------------------------ set-up and help
def test_set_up_commands():
    """What can be checked of the set-up commands without a fresh machine (tests/e2e/test_readme_setup.py runs
    scripts/setup.sh itself): each ``pip install 'glnet-lightning[EXTRA]'`` names an extra of this package whose
    requirements the test set-up installed; ``source .venv/bin/activate`` puts the venv's ``glnet`` and
    ``lightning`` on PATH; ``conda env create -f environment.yml`` (no conda here) installs what setup.sh does."""
    installed = metadata.distribution("glnet-lightning")
    extras = set(installed.metadata.get_all("Provides-Extra") or [])
    for command in ["pip install 'glnet-lightning[streaming]'", "pip install 'glnet-lightning[analysis]'",
                    "pip install 'glnet-lightning[sweeps]'", "pip install 'glnet-lightning[dense]'"]:
        assert command in readme_commands()
        (extra,) = re.findall(r"\[(\w+)\]", command)
        assert extra in extras, f"{command}: glnet-lightning has no extra {extra!r} ({sorted(extras)})"
        for requirement in installed.requires or []:
            if f'extra == "{extra}"' in requirement:
                name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
                metadata.version(name)  # raises PackageNotFoundError when the test set-up lacks it

    command = "source .venv/bin/activate"
    assert command in readme_commands()
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):  # e.g. the conda route
        required(None, "the suite runs outside a venv (scripts/setup.sh makes .venv/ and runs it there)")
    activate = venv / Path(shlex.split(command)[1]).relative_to(".venv")
    assert str(venv) in activate.read_text()  # it sets VIRTUAL_ENV and puts the folder below on PATH
    assert (activate.parent / "glnet").is_file() and (activate.parent / "lightning").is_file()

    command = "conda env create -f environment.yml"
    assert command in readme_commands()
    environment = yaml.safe_load((REPO / shlex.split(command)[-1]).read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    asked = []  # the arguments of setup.sh's pip installs, options left out ("-e X" kept as one)
    for line in (REPO / "scripts" / "setup.sh").read_text().splitlines():
        if "-m pip install" in line and not line.lstrip().startswith("#"):
            words = shlex.split(line)
            rest = iter(words[words.index("install") + 1:])
            for word in rest:
                if word == "-e":
                    asked.append(f"-e {next(rest)}")
                elif not word.startswith("-"):
                    asked.append(word)
    assert asked and sorted(pip) == sorted(asked), f"environment.yml installs {pip}, scripts/setup.sh {asked}"


def test_help_lists_every_readme_command(capsys):
    """``glnet --help`` lists every command the README runs; ``glnet bench --help`` the options it names."""
    out = ok(capsys, "glnet --help")
    listed = {line.split()[0] for line in out.split("commands:")[1].splitlines() if line.startswith("  ")}
    used = {shlex.split(c)[1] for c in readme_commands() if Path(shlex.split(c)[0]).name == "glnet"} - {"--help"}
    assert used <= listed, f"README commands glnet --help does not list: {sorted(used - listed)}"
    out = ok(capsys, "glnet bench --help")
    assert "--img-size" in out and "--compile" in out  # "scaling with --img-size, --compile speed-up"


def test_the_test_suite_commands(pytestconfig):
    """``.venv/bin/python -m pytest -m "not slow"`` from the repository root: pytest finds the suite there and
    knows the marker the fast tier leaves out (an unknown one would select everything)."""
    command = '.venv/bin/python -m pytest -m "not slow"'
    assert command in readme_commands()
    words = shlex.split(command)
    expression = words[words.index("pytest") + 2]
    named = set(re.findall(r"\w+", expression)) - {"not", "and", "or"}
    registered = {marker.split(":")[0].split("(")[0] for marker in pytestconfig.getini("markers")}
    assert named and named <= registered, f"-m {expression!r} names markers the suite does not register"
    assert pytestconfig.rootpath == REPO and pytestconfig.getini("testpaths") == ["tests"]


# ------------------------------------------------------------------------------------ Fashion-MNIST
@pytest.mark.slow
def test_fashion_mnist_commands(fashion_mnist, readme_dir, capsys, monkeypatch):
    """The main command in both spellings (one LightningCLI: the same seeded run), resumed with ``--ckpt_path
    last``, its slot figures, and TensorBoard reading the run from ``runs/``."""
    steps = fit_args(FASHION_STEPS)
    ok(capsys, "glnet fit --config configs/fashion_mnist.yaml", *steps)
    run_dir = readme_dir / "runs" / "fashion_mnist"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (run_dir / "config.yaml").is_file() and scalars(run_dir, "test/acc1")  # test_after_fit: the config's
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4

    for i, command in enumerate([".venv/bin/lightning fit --config configs/fashion_mnist.yaml",
                                 "lightning fit --config configs/fashion_mnist.yaml"]):
        other = readme_dir / f"lightning_{i}"
        other.mkdir()
        for name in ("configs", "sweeps"):
            (other / name).symlink_to(REPO / name)
        monkeypatch.chdir(other)
        ok(capsys, command, *steps)
        again = torch.load(other / "runs" / "fashion_mnist" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)
        assert same(again["state_dict"], first["state_dict"]), f"{command} trained another run"
    monkeypatch.chdir(readme_dir)

    ok(capsys, "glnet fit --config configs/fashion_mnist.yaml --ckpt_path last", *fit_args(
        {**FASHION_STEPS, "trainer.max_epochs": 2}))
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 8 and resumed["epoch"] == 1

    out = ok(capsys, "glnet viz runs/fashion_mnist/checkpoints/best.ckpt --out figures/")
    written = [Path(line) for line in out.split()]
    assert written and all(p.suffix == ".png" and p.is_file() and p.parent.name == "figures" for p in written)

    from tensorboard import program
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    command = "tensorboard --logdir runs/"
    assert command in readme_commands()
    words = shlex.split(command)
    assert (Path(sys.executable).parent / words[0]).is_file()  # the venv's script, on PATH once activated
    board = program.TensorBoard()
    board.configure(argv=[None, *words[1:]])  # the script's own flag parsing
    events = EventMultiplexer()
    events.AddRunsFromDirectory(board.flags.logdir)
    events.Reload()
    tags = {tag for kind in events.Runs()["fashion_mnist"].values() if isinstance(kind, list) for tag in kind}
    assert {"train/loss", "val/acc1", "test/acc1", "slot_maps"} <= tags


# ------------------------------------------------------------------------------------ ImageNet configs
@pytest.mark.slow
@pytest.mark.parametrize("command", [
    pytest.param("glnet validate --config configs/imagenet_glnet_4g.yaml --data.root /data/imagenet "
                 "--model.init_weights glnet_4g.pth", id="validate_published"),
    pytest.param("glnet fit --config configs/imagenet_glnet_4g.yaml --data.root /data/my_classes "
                 "--model.init_weights glnet_4g.pth", id="fine_tune_published"),
    pytest.param("glnet fit --config configs/imagenet_glnet_stl.yaml --data.root /data/imagenet", id="fit_8gpu"),
    pytest.param("glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet", id="fit_1gpu"),
    pytest.param("glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet "
                 "--data.batch_size 128 --trainer.accumulate_grad_batches 16", id="fit_1gpu_less_memory"),
    pytest.param("glnet sweep grid sweeps/ablation_stl.yaml --set data.root=/data/imagenet --only stl slots_9",
                 id="grid_rows"),
    pytest.param("glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage "
                 "postgresql://optuna:PW@db-host/optuna --set data.root=/data/imagenet --n-trials 3",
                 id="study_server"),
    pytest.param(".venv/bin/glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage "
                 "journal:/shared/runs/slots_kernel_imagenet.journal --set data.root=/data/imagenet --n-trials 3",
                 id="study_journal"),
])
def test_gpu_recipes_stop_in_one_line_naming_the_readme_override(command, machine, readme_dir, conformance, capsys):
    """As written, on this machine without a GPU: exit 2 and one line saying the config wants a GPU, after the
    data root and the model were accepted and before anything is written or connected to."""
    if "glnet_4g.pth" in command:
        torch.save({"model": published_state_dict(conformance, "glnet_4g")}, readme_dir / "glnet_4g.pth")
    words = shlex.split(command)
    prog = "glnet" if words[1] != "sweep" else f"glnet sweep {words[2]}"
    code, out, err = run(capsys, command, where=machine)
    assert code == 2, err[-3000:]
    line = one_error_line(err, prog=prog)
    assert "trainer.accelerator=gpu but this machine has no CUDA GPU" in line
    if prog == "glnet":
        assert line.endswith("to run on its CPU add " + " ".join(readme_cpu_override())), line
    assert not (readme_dir / "runs").exists() and not (readme_dir / "shared").exists()


@pytest.mark.slow
def test_a_sweeps_gpu_error_names_the_override_in_the_sweeps_own_form(machine, capsys):
    code, _, err = run(capsys, "glnet sweep grid sweeps/ablation_stl.yaml --set data.root=/data/imagenet "
                               "--only stl slots_9", where=machine)
    line = one_error_line(err, prog="glnet sweep grid")
    assert code == 2 and line.endswith("add " + " ".join(as_sets(readme_cpu_override()))), line


@pytest.mark.slow
def test_published_weights_validate_then_fine_tune(machine, readme_dir, conformance, capsys, caplog):
    """A published GLNet-4G file (its keys and shapes) evaluated as it is, then fine-tuned on 4 classes: the
    head is re-initialised and the log says so, the rest starts from the file."""
    published = published_state_dict(conformance, "glnet_4g")
    torch.save({"model": published}, readme_dir / "glnet_4g.pth")
    options = [*readme_cpu_override(), *fit_args(IMAGENET_STEPS)]
    run_dir = readme_dir / "runs" / "glnet_4g"
    with caplog.at_level("INFO"):
        ok(capsys, "glnet validate --config configs/imagenet_glnet_4g.yaml --data.root /data/imagenet "
                   "--model.init_weights glnet_4g.pth", *options, where=machine)
    assert "init_weights: the raw weights (model) of glnet_4g.pth" in caplog.text
    assert len(scalars(run_dir, "val/acc1")) == 1

    caplog.clear()
    with caplog.at_level("INFO"):
        ok(capsys, "glnet fit --config configs/imagenet_glnet_4g.yaml --data.root /data/my_classes "
                   "--model.init_weights glnet_4g.pth", *options, where=machine)
    assert "head re-initialised: the file has 1000 classes, the model 4" in caplog.text
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False, mmap=True)
    assert checkpoint["hyper_parameters"]["num_classes"] == 4
    tuned = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    start = convert_official_state_dict(published)
    assert {k for k in start if not k.startswith("head.")} < tuned.keys()
    # the weights (not the BatchNorm statistics, which a training step moves) are the file's after one step at
    # the scaled learning rate (4 / 2048 of 2e-3); a fresh initialisation differs by about 0.1
    weights = [k for k in start if not k.startswith("head.") and not k.endswith(BATCH_NORM_STATISTICS)]
    assert max((tuned[k].float() - start[k]).abs().max().item() for k in weights) < 1e-3


@pytest.mark.slow
def test_token_labeling_commands(machine, readme_dir, imagenet_token_labels, conformance, capsys, caplog):
    """The published GLNet-4G token-labeling file (its keys and shapes) evaluated as it is, then a step of
    training on the tree's generated label maps. 64 px images, so the final grid (and the label grid) is
    2 x 2 and MixToken has room for a box."""
    where = {**machine, "/data/label_top5_train_nfnet": str(imagenet_token_labels)}
    options = [*readme_cpu_override(), *fit_args({**IMAGENET_STEPS, "data.image_size": 64}),
               "--model.token_labeling.label_size", "2"]
    run_dir = readme_dir / "runs" / "glnet_4g_tklb"
    torch.save({"model": published_state_dict(conformance, "glnet_4g_tklb")}, readme_dir / "glnet_4g_tklb.pth")
    with caplog.at_level("INFO"):
        ok(capsys, "glnet validate --config configs/imagenet_glnet_4g_tklb.yaml --data.root /data/imagenet "
                   "--model.init_weights glnet_4g_tklb.pth", *options, where=where)
    assert "init_weights: the raw weights (model) of glnet_4g_tklb.pth" in caplog.text
    assert "re-initialised: the file has 1000 classes, the model 4" in caplog.text  # both heads: 4 classes here
    assert len(scalars(run_dir, "val/acc1")) == 1

    ok(capsys, "glnet fit --config configs/imagenet_glnet_4g_tklb.yaml --data.root /data/imagenet "
               "--data.token_labels /data/label_top5_train_nfnet", *options, where=where)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert checkpoint["global_step"] == 1 and "ema_state_dict" not in checkpoint  # the recipe has no EMA
    assert checkpoint["hyper_parameters"]["token_labeling"]["dense_weight"] == 0.5
    assert len(scalars(run_dir, "train/loss")) == 1


@pytest.mark.slow
def test_export(readme_dir, fit_checkpoint, capsys):
    """The README's path to a fit checkpoint, holding the session's (tiny) one; ONNX checked against eager."""
    command = "glnet export runs/glnet_4g/checkpoints/best.ckpt --format onnx --out glnet_4g.onnx"
    source = readme_dir / shlex.split(command)[2]
    source.parent.mkdir(parents=True)
    shutil.copy(fit_checkpoint.path, source)
    import onnx

    out = ok(capsys, command)
    assert "exported best.ckpt (step 2) EMA to glnet_4g.onnx (onnx)" in out
    assert len(re.findall(r"max abs difference to eager at \d+x3x\d+x\d+", out)) == 2  # two batch sizes / sizes
    onnx.checker.check_model(str(readme_dir / "glnet_4g.onnx"))


@pytest.mark.slow
def test_imagenet_fits(machine, readme_dir, capsys):
    """The 8-GPU and the one-GPU recipe with the README's CPU override: each trains into its own run directory;
    the folder as litdata shards (``glnet data prepare``) trains in place of ``--data.root`` as the README says;
    the one-GPU low-memory line sets the batch and accumulation it names."""
    cpu = readme_cpu_override()
    steps = fit_args(IMAGENET_STEPS)
    for command, name, accumulate in [
        ("glnet fit --config configs/imagenet_glnet_stl.yaml --data.root /data/imagenet", "glnet_stl", 1),
        ("glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet", "glnet_stl_1gpu", 8),
    ]:
        ok(capsys, command, *cpu, *steps, where=machine)
        run_dir = readme_dir / "runs" / name
        checkpoints = sorted((run_dir / "checkpoints").iterdir())
        assert [p.name for p in checkpoints] == ["best.ckpt", "last.ckpt"]
        for path in checkpoints:  # 0.45 GB each: one run's at a time on the disk
            path.unlink()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (config["trainer"].get("accumulate_grad_batches") or 1) == accumulate
        assert config["data"]["init_args"]["root"] == machine["/data/imagenet"]
        assert len(scalars(run_dir, "val/acc1")) == 1
    assert sorted(p.name for p in (readme_dir / "runs").iterdir()) == ["glnet_stl", "glnet_stl_1gpu"]  # apart

    out = ok(capsys, "glnet fit --config configs/imagenet_glnet_stl_1gpu.yaml --data.root /data/imagenet "
                     "--data.batch_size 128 --trainer.accumulate_grad_batches 16", *cpu, "--print_config",
             where=machine)
    printed = yaml.safe_load(out)
    assert printed["data"]["init_args"]["batch_size"] == 128 and printed["trainer"]["accumulate_grad_batches"] == 16

    out = ok(capsys, "glnet data prepare --root /data/imagenet --output /fast/imagenet_shards", where=machine)
    shards = readme_dir / "fast" / "imagenet_shards"
    assert f"train with: --data.streaming {shards}" in out
    # "--data.streaming /fast/imagenet_shards --data.repeated_aug false in place of --data.root"
    (streaming,) = re.findall(r"`(--data\.streaming /fast/imagenet_shards[^`]*)` in place of `--data\.root`",
                              " ".join(README.read_text().split()))
    shutil.rmtree(readme_dir / "runs" / "glnet_stl")
    ok(capsys, "glnet fit --config configs/imagenet_glnet_stl.yaml --data.root /data/imagenet", *cpu, *steps,
       where=machine, instead=("--data.root /data/imagenet", streaming))
    config = yaml.safe_load((readme_dir / "runs" / "glnet_stl" / "config.yaml").read_text())["data"]["init_args"]
    assert config["streaming"] == str(shards) and config["root"] is None and config["repeated_aug"] is False
    assert len(scalars(readme_dir / "runs" / "glnet_stl", "val/acc1")) == 1


# ------------------------------------------------------------------------------------ dense prediction
#: Steps and sizes of a README run of a dense config on a CPU: one training step of 2 images (64 px crops / short
#: side), one validation batch, no sanity check (the networks are the configs' own, at full width).
DENSE_STEPS = {"trainer.max_steps": 1, "trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1,
               "trainer.num_sanity_val_steps": 0, "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False,
               "data.batch_size": 2, "data.num_workers": 0}
SEG_STEPS = {**DENSE_STEPS, "trainer.val_check_interval": 1,
             "data.crop_size": 64, "data.scale": "[256, 64]", "data.val_batch_size": 2}
DET_STEPS = {**DENSE_STEPS, "trainer.max_epochs": 1, "trainer.limit_train_batches": 1}


def _demo_data(tree: Path, fashion_mnist: Path) -> list[str]:
    """The session's small scenes tree in place of the demo's 2000 (same generator, fewer scenes)."""
    from testkit.plugin import FASHION_SCENES

    return fit_args({"data.root": tree, "data.fashion_mnist": fashion_mnist,
                     **{f"data.{k}": v for k, v in FASHION_SCENES.items()}})


@pytest.mark.slow
def test_segmentation_commands(readme_dir, ade20k_tree, fashion_scenes_ade20k, fashion_mnist, conformance, capsys,
                               caplog):
    """ADE20K with GLNet-4G + Semantic FPN as the config builds them, from the published GLNet-4G file (its keys and
    shapes), on 8 GPUs and on one (the README's CPU override); then the demo's fit, predict and export."""
    torch.save({"model": published_state_dict(conformance, "glnet_4g")}, readme_dir / "glnet_4g.pth")
    where = {"/data/ADEChallengeData2016": str(ade20k_tree)}
    options = [*readme_cpu_override(), *fit_args(SEG_STEPS)]
    run_dir = readme_dir / "runs" / "ade20k_glnet_4g_semfpn"
    with caplog.at_level("INFO"):
        ok(capsys, "glnet fit --config configs/ade20k_glnet_4g_semfpn.yaml --data.root /data/ADEChallengeData2016 "
                   "--model.init_weights glnet_4g.pth", *options, where=where)
    assert "init_weights: the raw weights (model) of glnet_4g.pth; not used for dense prediction: head, norm" in caplog.text
    assert len(scalars(run_dir, "val/mIoU")) == 1
    shutil.rmtree(run_dir)
    ok(capsys, "glnet fit --config configs/ade20k_glnet_4g_semfpn.yaml --data.root /data/ADEChallengeData2016 "
               "--model.init_weights glnet_4g.pth --trainer.devices 1 --trainer.strategy auto "
               "--trainer.accumulate_grad_batches 8", *options, where=where)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["accumulate_grad_batches"] == 8 and config["model"]["init_args"]["head"] == "semfpn"
    assert len(scalars(run_dir, "train/loss")) == 1  # the one optimizer step took 8 batches
    shutil.rmtree(run_dir)

    demo = [*_demo_data(fashion_scenes_ade20k, fashion_mnist), *fit_args({**SEG_STEPS, "trainer.max_steps": 2})]
    out = ok(capsys, "glnet fit --config configs/fashion_scenes_seg.yaml", *demo)
    assert "test/mIoU" in out
    ok(capsys, "glnet predict --config configs/fashion_scenes_seg.yaml "
               "--ckpt_path runs/fashion_scenes_seg/checkpoints/best.ckpt", *demo, "--trainer.limit_predict_batches", "1")
    assert len(list((readme_dir / "runs" / "fashion_scenes_seg" / "predictions").glob("*.png"))) == 2
    import onnx

    out = ok(capsys, "glnet export runs/fashion_scenes_seg/checkpoints/best.ckpt --format onnx "
                     "--out fashion_scenes_seg.onnx")
    assert len(re.findall(r"max abs difference to eager at \d+x3x\d+x\d+", out)) == 2
    onnx.checker.check_model(str(readme_dir / "fashion_scenes_seg.onnx"))


@pytest.mark.slow
def test_detection_commands(readme_dir, coco_tree, fashion_scenes_coco, fashion_mnist, conformance, capsys, caplog):
    """COCO with GLNet-4G Mask R-CNN as the 1x config builds it (64 px short side), from the published GLNet-4G
    file, on 8 GPUs and on one (the README's CPU override); then the demo's fit and its drawn predictions."""
    torch.save({"model": published_state_dict(conformance, "glnet_4g")}, readme_dir / "glnet_4g.pth")
    where = {"/data/coco": str(coco_tree)}
    options = [*readme_cpu_override(), *fit_args({**DET_STEPS, "model.min_size": 64, "model.max_size": 96})]
    run_dir = readme_dir / "runs" / "coco_glnet_4g_maskrcnn_1x"
    with caplog.at_level("INFO"):
        ok(capsys, "glnet fit --config configs/coco_glnet_4g_maskrcnn_1x.yaml --data.root /data/coco "
                   "--model.init_weights glnet_4g.pth", *options, where=where)
    assert "init_weights: the raw weights (model) of glnet_4g.pth; not used for dense prediction: head, norm" in caplog.text
    assert len(scalars(run_dir, "val/bbox_mAP")) == 1 and len(scalars(run_dir, "val/segm_mAP")) == 1
    shutil.rmtree(run_dir)
    ok(capsys, "glnet fit --config configs/coco_glnet_4g_maskrcnn_1x.yaml --data.root /data/coco "
               "--model.init_weights glnet_4g.pth --trainer.devices 1 --trainer.strategy auto "
               "--trainer.accumulate_grad_batches 8", *options, where=where)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["accumulate_grad_batches"] == 8 and config["model"]["init_args"]["kind"] == "maskrcnn"
    shutil.rmtree(run_dir)

    demo = [*_demo_data(fashion_scenes_coco, fashion_mnist), *fit_args(DET_STEPS)]
    out = ok(capsys, "glnet fit --config configs/fashion_scenes_det.yaml", *demo)
    assert "test/bbox_mAP" in out and "test/segm_mAP" in out
    ok(capsys, "glnet predict --config configs/fashion_scenes_det.yaml "
               "--ckpt_path runs/fashion_scenes_det/checkpoints/best.ckpt", *demo, "--trainer.limit_predict_batches", "1")
    run_dir = readme_dir / "runs" / "fashion_scenes_det"
    assert len(list((run_dir / "predictions").glob("*.png"))) == 2 and (run_dir / "predictions.json").is_file()


@pytest.mark.slow
def test_dense_bench_command(capsys):
    """The dense benchmark as the README runs it, at a small size: one row per backbone, the head's parameters."""
    out = ok(capsys, "glnet bench glnet_stl glnet_4g --head upernet", "--img-size", "64x128", "--warmup", "0",
             "--repeats", "1")
    rows = [line for line in out.splitlines() if line.lstrip().startswith(("glnet_stl", "glnet_4g"))]
    assert len(rows) == 2, out


# ------------------------------------------------------------------------------------ sweeps
@pytest.mark.slow
def test_ablation_grid_commands(fashion_mnist, machine, readme_dir, capsys):
    """The grid's dry run, its SLURM script and its two runs (one row of the Fashion-MNIST grid; the two ImageNet
    rows checked with --dry-run), then the table of the rows trained, ours beside the paper's."""
    variants = [v["name"] for v in yaml.safe_load((REPO / "sweeps" / "ablation_stl.yaml").read_text())["variants"]]
    out = ok(capsys, "glnet sweep grid sweeps/ablation_stl.yaml --dry-run")
    assert re.findall(r"^# (\w+) \(", out, flags=re.M) == variants  # the paper's 15 rows
    assert not (readme_dir / "runs").exists()

    out = ok(capsys, "glnet sweep grid sweeps/ablation_stl.yaml --emit slurm --set data.root=/data/imagenet",
             where=machine)
    assert f"#SBATCH --array=0-{len(variants) - 1}" in out and f"NAMES=({' '.join(variants)})" in out
    assert f"data.root={machine['/data/imagenet']}" in out

    cpu_sets = as_sets(readme_cpu_override())
    out = ok(capsys, "glnet sweep grid sweeps/ablation_stl.yaml --set data.root=/data/imagenet --only stl slots_9",
             *cpu_sets, *set_args(IMAGENET_STEPS), "--dry-run", where=machine)
    assert re.findall(r"^# (\w+) \(", out, flags=re.M) == ["stl", "slots_9"]

    out = ok(capsys, "glnet sweep grid sweeps/ablation_fashion_mnist.yaml --runs runs/abl", "--only", "stl",
             *set_args(FASHION_STEPS))
    assert "stl: finished" in out
    top1 = scalars(readme_dir / "runs" / "abl" / "stl", "test/acc1")[-1][1]  # the table's top-1: test, else val

    out = ok(capsys, "glnet ablation table sweeps/ablation_fashion_mnist.yaml --runs runs/abl --img-size 32 "
                     "--num-classes 10")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    header, table = rows[0], {row[0]: row for row in rows[1:]}
    assert list(table) == variants
    column = header.index("top-1 (%) ours / paper")
    assert table["stl"][column] == f"{100 * top1:.2f} / 82.50"
    assert all(table[name][column].startswith("- / ") for name in variants[1:])  # not trained


@pytest.mark.slow
def test_optuna_fashion_mnist_commands(fashion_mnist, readme_dir, capsys):
    """The Fashion-MNIST study (one of its trials), then the report of the study where the README looks for it."""
    out = ok(capsys, "glnet sweep optuna sweeps/optuna_slots_kernel.yaml --n-trials 20", "--n-trials", "1",
             *set_args(FASHION_STEPS))
    assert "1 trials (1 complete)" in out
    out = ok(capsys, "glnet sweep report --storage sqlite:///runs/sweeps/slots_kernel_fashion_mnist/study.db")
    assert "1 trials (1 complete)" in out
    (html,) = re.findall(r"^plots: (\S+)$", out, flags=re.M)
    assert Path(html).is_file()
    assert Path(html).resolve().parent == readme_dir / "runs" / "sweeps" / "slots_kernel_fashion_mnist"


@pytest.mark.slow
def test_shared_study_commands(machine, readme_dir, postgres_url, capsys):
    """The ImageNet study's worker command on a PostgreSQL server and on a journal file (the SLURM task's), one
    trial each, and the report of the server's study by the README's study name."""
    import optuna

    from glnet_lightning.sweeps.optuna_study import load_study

    where = {**machine, "postgresql://optuna:PW@db-host/optuna": postgres_url}
    sets = [*as_sets(readme_cpu_override()), *set_args(IMAGENET_STEPS)]
    ok(capsys, "glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage "
               "postgresql://optuna:PW@db-host/optuna --set data.root=/data/imagenet --n-trials 3",
       *sets, "--n-trials", "1", where=where)
    out = ok(capsys, "glnet sweep report --storage postgresql://optuna:PW@db-host/optuna --study-name "
                     "slots_kernel_imagenet_stl", where=where)
    assert "1 trials (1 complete)" in out and "Pareto front" in out
    shutil.rmtree(readme_dir / "runs")  # the trial's full-size checkpoints (0.9 GB); the study is in the server

    ok(capsys, ".venv/bin/glnet sweep optuna sweeps/optuna_slots_kernel_imagenet.yaml --storage "
               "journal:/shared/runs/slots_kernel_imagenet.journal --set data.root=/data/imagenet --n-trials 3",
       *sets, "--n-trials", "1", where=where)
    study = load_study(f"journal:{readme_dir}/shared/runs/slots_kernel_imagenet.journal", "slots_kernel_imagenet_stl")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
