"""The bench command's refusals: unknown models and bad arguments exit non-zero with a useful message."""
import pytest
import torch


def test_unknown_model_suggests_close_names(run_bench, fast_args):
    code, _, err = run_bench(["resnet19", "--no-memory", *fast_args])
    assert code != 0
    assert "unknown model 'resnet19'" in err and "resnet18" in err


@pytest.mark.parametrize("argv, message", [
    (["resnet10t", "--batch-size", "0"], "--batch-size"),
    pytest.param(["resnet10t", "--precision", "fp16"], "CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on CUDA")),
    (["resnet10t", "--precision", "int8"], "invalid choice"),
    (["resnet10t", "--compile", "--warmup", "0"], "--warmup"),
    (["resnet10t", "--freezing"], "--freezing applies to compiled inference only"),
    (["resnet10t", "--compile", "--freezing", "--mode", "train"], "--freezing applies to compiled inference only"),
    (["resnet10t:depth"], "key=value"),
    (["resnet10t", "resnet10t"], "only once"),
])
def test_bad_arguments_fail_with_a_message(argv, message, run_bench):
    code, _, err = run_bench([*argv, "--no-memory"])
    assert code != 0
    assert message in err


def test_default_batch_size_follows_the_device(monkeypatch):
    """CUDA gets the paper's batch 128, a CPU 16; an explicit --batch-size always wins."""
    from glnet_lightning.cli import bench as cli

    parser = cli.build_parser()
    for cuda, expected in ((False, 16), (True, 128)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert cli.config_from_args(parser.parse_args(["resnet10t"])).batch_size == expected
        assert cli.config_from_args(parser.parse_args(["resnet10t", "--batch-size", "4"])).batch_size == 4
