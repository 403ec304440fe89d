import random
import sys

import pytest
import torch

from loafing.cli import main
from loafing.data import load_digits_splits
from loafing.config import TrainConfig
from loafing.train import train


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """A real (tiny) CT and ST run of resnet20-cifar on digits, shared by the tests that measure them."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("ct", "st"):
        config = TrainConfig(model="resnet20-cifar", dataset="digits", method=method, epochs=2, lr=0.1,
                             seed=0, device="cpu", monitor_calib_size=128, out=str(root / method))
        train(config, progress=False)
        runs[method] = root / method
    return runs


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the `loafing` CLI in-process: returns (exit code, stdout, stderr)."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["loafing", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err
    return run


@pytest.fixture
def interrupted_training(monkeypatch):
    """Train a config until Ctrl-C (KeyboardInterrupt) strikes during the given epoch, as a user would stop it."""
    import loafing.train as train_module

    def run(config: TrainConfig, epoch: int) -> None:
        real, calls = train_module.train_one_epoch, {"n": 0}

        def dies_in_epoch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == epoch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(train_module, "train_one_epoch", dies_in_epoch)
        try:
            with pytest.raises(KeyboardInterrupt):
                train(config, progress=False)
        finally:
            monkeypatch.setattr(train_module, "train_one_epoch", real)
    return run
