"""End-to-end runs of the bench command on tiny models (no timing thresholds: machines are noisy)."""
import json
import math

import pytest

MODELS = ["resnet10t", "convnext_atto"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, run_bench, fast_args):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    code, out, err = run_bench([*MODELS, "--img-size", "32", "64", *fast_args, "--threads", "1", "--json", str(path)])
    assert code == 0, err
    return json.loads(path.read_text()), out


def test_json_has_run_context(two_models):
    record, _ = two_models
    for key in ("command", "date", "torch_version", "threads", "machine", "settings", "gemm_peak", "results",
                "scaling"):
        assert key in record
    assert record["command"].startswith("glnet bench resnet10t convnext_atto")
    assert record["threads"] == 1
    assert record["machine"]["cpu_model"]
    assert record["gemm_peak"]["flops_per_s"] > 0


def test_every_model_and_size_has_positive_figures(two_models):
    record, _ = two_models
    assert [(r["model"], r["img_size"]) for r in record["results"]] == [
        (m, s) for s in (32, 64) for m in MODELS]
    for row in record["results"]:
        assert row["throughput"]["median"] > 0
        assert row["throughput"]["min"] <= row["throughput"]["median"] <= row["throughput"]["max"]
        assert row["throughput"]["ms_per_batch"] > 0
        assert len(row["times_s"]) == 2
        assert row["params"] > 0 and row["macs"] > 0 and row["gemm_fraction"] > 0
        assert row["memory"]["peak_bytes"] > 0


def test_macs_grow_with_the_image(two_models):
    record, _ = two_models
    macs = {(r["model"], r["img_size"]): r["macs"] for r in record["results"]}
    for model in MODELS:
        assert macs[model, 64] > macs[model, 32]


def test_ratios_are_relative_to_the_first_model(two_models):
    record, _ = two_models
    for size in (32, 64):
        rows = [r for r in record["results"] if r["img_size"] == size]
        assert rows[0]["ratio"] == 1.0
        expected = rows[1]["throughput"]["median"] / rows[0]["throughput"]["median"]
        assert math.isclose(rows[1]["ratio"], expected)


def test_scaling_exponents_for_two_sizes(two_models):
    record, out = two_models
    assert [s["model"] for s in record["scaling"]] == MODELS
    for scaling in record["scaling"]:
        assert scaling["img_sizes"] == [32, 64]
        assert math.isfinite(scaling["time_exponent"])
    assert "time exp" in out


def test_table_is_printed(two_models):
    _, out = two_models
    assert "GEMM peak" in out and "peak MB" in out
    assert all(model in out for model in MODELS)


def test_train_mode_counts_backward_macs(tmp_path, run_bench, fast_args):
    path = tmp_path / "train.json"
    code, _, err = run_bench(["resnet10t", "--mode", "train", "--img-size", "32", "--no-memory",
                              "--num-classes", "10", *fast_args, "--json", str(path)])
    assert code == 0, err
    row = json.loads(path.read_text())["results"][0]
    assert row["step_macs"] > 2 * row["macs"]
    assert row["memory"] is None


def test_every_result_names_the_cpu_and_its_kernel_flags(two_models):
    from glnet_lightning.bench.report import RELEVANT_CPU_FLAGS

    record, out = two_models
    machine = record["machine"]
    cpuinfo = open("/proc/cpuinfo").read().split()
    assert machine["cpu_flags"] == [flag for flag in RELEVANT_CPU_FLAGS if flag in cpuinfo]
    assert machine["torch_cpu_capability"] and machine["conv_path"] == "as the model's precision"  # fp32 run
    assert f"cpu: {machine['cpu_model']}; flags: " in out


@pytest.mark.parametrize("conv, dtype", [("float32", "float32"), ("autocast", "bfloat16")])
def test_bf16_run_says_which_conv_path_ran(conv, dtype, run_bench, fast_args, tmp_path):
    path = tmp_path / "out.json"
    code, out, err = run_bench(["glnet_stl", "--img-size", "32", *fast_args,
                                "--precision", "bf16", "--conv-precision", conv, "--no-memory", "--json", str(path)])
    assert code == 0, err
    expected = f"convs: {dtype} (forced: --conv-precision {conv})"
    assert expected in out and json.loads(path.read_text())["machine"]["conv_path"] == expected.split(": ", 1)[1]


def check_compiled_run(json_path, out, err, mode: str, settings: str = "mode=default"):
    """The compile time is reported apart from the steady-state speed, and the speed-up over eager."""
    (row,) = json.loads(json_path.read_text())["results"]
    assert row["compile_seconds"] > 0 and row["eager"]["median"] > 0 and row["throughput"]["median"] > 0
    assert math.isclose(row["compile_speedup"], row["throughput"]["median"] / row["eager"]["median"])
    assert "compile s" in out and f"compiling resnet10t at 32px ({mode}, {settings})" in err


def test_compiled_training_reports_compile_time_apart_from_speed(run_bench, fast_args, tmp_path):
    code, out, err = run_bench(["resnet10t", "--img-size", "32", *fast_args, "--mode", "train", "--compile",
                                "--no-memory", "--json", str(tmp_path / "out.json")])
    assert code == 0, err
    check_compiled_run(tmp_path / "out.json", out, err, "train")


def test_compiled_inference_with_freezing_reports_compile_time_and_leaves_inductor_as_found(run_bench, fast_args,
                                                                                              tmp_path):
    """One compiled inference run (each costs a cold inductor compile) for both: compile time apart from speed,
    as for training above, and --freezing reaching inductor (its freezing pass runs) for this run only."""
    import logging

    from torch._inductor import config as inductor_config

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    freezing_log, records = logging.getLogger("torch._inductor.freezing"), Records()
    previous_level = freezing_log.level
    freezing_log.addHandler(records)
    freezing_log.setLevel(logging.DEBUG)
    try:
        code, out, err = run_bench(["resnet10t", "--img-size", "32", *fast_args, "--compile", "--freezing",
                                    "--no-memory", "--json", str(tmp_path / "out.json")])
    finally:
        freezing_log.removeHandler(records)
        freezing_log.setLevel(previous_level)
    assert code == 0, err
    check_compiled_run(tmp_path / "out.json", out, err, "infer", "mode=default, freezing")
    assert any("FROZEN GRAPH" in message for message in records.messages)
    assert "inductor freezing" in out
    assert inductor_config.freezing is False
