"""The bench command's refusals: unknown models and bad arguments exit non-zero with a useful message."""
import pytest
import torch


def test_unknown_model_suggests_close_names(run_bench, tiny_args):
    code, _, err = run_bench(["resnet19", "--no-memory", *tiny_args])
    assert code != 0
    assert "unknown model 'resnet19'" in err and "resnet18" in err


@pytest.mark.parametrize("argv, message", [
    (["resnet10t", "--batch-size", "0"], "--batch-size"),
    pytest.param(["resnet10t", "--precision", "fp16"], "CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on CUDA")),
    (["resnet10t", "--precision", "int8"], "invalid choice"),
    (["resnet10t", "--compile", "--warmup", "0"], "--warmup"),
    (["resnet10t:depth"], "key=value"),
    (["resnet10t", "resnet10t"], "only once"),
])
def test_bad_arguments_fail_with_a_message(argv, message, run_bench):
    code, _, err = run_bench([*argv, "--no-memory"])
    assert code != 0
    assert message in err
