import pandas as pd
import pytest
import torch
from loafing.models import MODELS


def test_measure_end_to_end_on_a_trained_run(run_cli, trained_runs, tmp_path):
    out = tmp_path / "measure.csv"
    code, stdout, _ = run_cli("measure", "--ckpt", trained_runs["st"] / "checkpoint.pt",
                              "--calib-size", 256, "--out", out, "--quiet", "--device", "cpu")
    assert code == 0
    df = pd.read_csv(out)
    assert len(df) == 27 and df["plan"].is_unique
    for column in ("model", "method", "plan", "depths", "n_blocks", "is_main", "top1", "recalibrated", "seed",
                   "lam", "run", "dataset"):
        assert column in df.columns
    assert df["is_main"].sum() == 1
    main_row = df[df["is_main"]].iloc[0]
    assert main_row["depths"] == "3-3-3" and main_row["n_blocks"] == 9
    assert (df["method"] == "st").all() and df["recalibrated"].all()
    assert df["n_blocks"].tolist() == [sum(map(int, d.split("-"))) for d in df["depths"]]
    subs = df[~df["is_main"]]["top1"]
    assert f"main top-1 {main_row['top1']:.2f}%" in stdout
    assert f"mean {subs.mean():.2f}" in stdout and f"min {subs.min():.2f}" in stdout


def test_measure_without_recalibration_reproduces_the_training_log(run_cli, trained_runs, tmp_path):
    out = tmp_path / "m.csv"
    code, _, _ = run_cli("measure", "--ckpt", trained_runs["ct"] / "checkpoint.pt",
                         "--no-recalibrate", "--plan", "[1,2,3] [4,5,6] [7,8,9]", "--plan", "[1] [4] [7]",
                         "--out", out, "--quiet")
    assert code == 0
    df = pd.read_csv(out)
    log = pd.read_csv(trained_runs["ct"] / "train_log.csv")
    assert df["plan"].tolist() == ["[1,2,3] [4,5,6] [7,8,9]", "[1] [4] [7]"]
    assert df.loc[0, "top1"] == pytest.approx(log["test_top1_running_bn"].iloc[-1], abs=1e-9)
    assert not df["recalibrated"].any()
    # The logged recalibrated accuracy is the main network recalibrated on the run's --calib-size (128) images.
    code, _, _ = run_cli("measure", "--ckpt", trained_runs["ct"] / "checkpoint.pt", "--calib-size", 128,
                         "--plan", "[1,2,3] [4,5,6] [7,8,9]", "--out", out, "--quiet")
    assert code == 0
    assert pd.read_csv(out).loc[0, "top1"] == pytest.approx(log["test_top1_recalibrated"].iloc[-1], abs=1e-9)


def test_train_writes_complete_checkpoint_and_log(trained_runs):
    ckpt = torch.load(trained_runs["st"] / "checkpoint.pt", weights_only=True)  # tensors and plain types only
    assert {"model", "optimizer", "scheduler", "epoch", "config", "normalization", "seed"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["method"] == "st"
    log = pd.read_csv(trained_runs["st"] / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert (log["kl"] > 0).all()
    assert (log["loss"] - log["ce"] - 1.0 * log["kl"]).abs().max() < 1e-4
    ct_log = pd.read_csv(trained_runs["ct"] / "train_log.csv")
    assert (ct_log["kl"] == 0).all()
    assert (trained_runs["st"] / "config.json").exists()
    assert not list(trained_runs["st"].glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["measure", "--ckpt", "{tmp}/nope.pt"], "does not exist"),
    (["measure", "--ckpt", "{tmp}/garbage.pt"], "is unreadable"),
    (["measure", "--ckpt", "{st}", "--space", "random"], "unknown space 'random'; valid choices: ordered, uniform"),
    (["measure", "--ckpt", "{st}", "--plan", "[1,2] 3"], "invalid plan string"),
    (["measure", "--ckpt", "{st}", "--plan", "[1,2] [3,4,5,6] [7,8,9]"], "block 3 is not in stage 2"),
    (["measure", "--ckpt", "{st}", "--plan", "[1] [5] [7]"], "block 4 is not skippable"),
    (["measure", "--ckpt", "{st}", "--dataset", "mnist"], "unknown dataset 'mnist'; valid choices: digits"),
    (["measure", "--ckpt", "{st}", "--dataset", "cifar10", "--data-dir", "{tmp}/none"], "does not exist"),
    (["measure", "--ckpt", "{st}", "--dataset", "cifar10"], "--data-dir is required"),
    (["measure", "--ckpt", "{tmp}/foreign.th"], "pass --model"),
    (["measure", "--ckpt", "{tmp}/foreign.th", "--model", "resnet18"], "unknown model 'resnet18'; valid choices"),
    (["measure", "--ckpt", "{tmp}/foreign.th", "--model", "resnet32-cifar"],
     # 6 blocks x 12 keys, less their 12 BN batch counters, which a foreign file may lack
     "does not fit the model: 60 missing keys, 0 unexpected keys, 0 keys of the wrong shape"),
    (["measure", "--ckpt", "{tmp}/foreign100.th", "--model", "resnet20-cifar"], "has 100 classes but digits has 10"),
    (["measure", "--ckpt", "{st}", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--method", "dropout"], "unknown method 'dropout'; valid choices: ct, st"),
    (["train", "--model", "vgg16"], "unknown model 'vgg16'; valid choices"),
    (["train", "--epochs", "0"], "--epochs must be at least 1"),
    (["measure", "--ckpt", "{st}", "--bogus"], "No such option '--bogus'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, trained_runs, tmp_path, args, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    sd = torch.load(trained_runs["st"] / "checkpoint.pt", weights_only=True)["model"]
    net_sd = {f"module.{k[4:]}": v for k, v in sd.items()}
    torch.save({"best_prec1": 90.0, "state_dict": net_sd}, tmp_path / "foreign.th")
    wide = dict(net_sd, **{"module.linear.weight": torch.zeros(100, 64), "module.linear.bias": torch.zeros(100)})
    torch.save({"best_prec1": 60.0, "state_dict": wide}, tmp_path / "foreign100.th")
    out = tmp_path / "out" / "result.csv"
    args = [a.format(tmp=tmp_path, st=trained_runs["st"] / "checkpoint.pt") for a in args]
    if args[0] == "measure":
        args += ["--out", str(out), "--quiet"]
    else:
        args += ["--out", str(tmp_path / "run"), "--quiet"]
    code, stdout, stderr = run_cli(*args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loafing: error:"), stderr
    assert message in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_help_on_every_command(run_cli):
    for command in ([], ["train"], ["measure"], ["destruct"], ["models"], ["figures"], ["reproduce"]):
        code, stdout, _ = run_cli(*command, "--help")
        assert code == 0 and "Usage:" in stdout


def test_train_options_are_the_train_config_fields_with_their_defaults():
    from loafing.cli.train_commands import train
    from loafing.config import TrainConfig, config_fields

    options = {p.name: p for p in train.params}
    shown = [f for f in config_fields() if f.metadata["cli"]]
    assert all(f.name in options for f in shown)
    defaults = TrainConfig()
    for f in shown:
        assert options[f.name].default == getattr(defaults, f.name), f.name
        assert options[f.name].help == f.metadata["help"], f.name


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["train", "--lr", "-0.1"], "--lr must be greater than 0, got -0.1"),
    (["train", "--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    (["train", "--method", "st", "--lam", "inf"], "--lam must be a finite number, got inf"),
    (["train", "--method", "ct", "--lam", "5"], "--lam needs --method st"),
    (["train"], "--out is required"),
    (["measure", "--ckpt", "x.pt", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_settings_out_of_range_are_one_line_errors(run_cli, tmp_path, args, message):
    if args[0] == "train" and args != ["train"]:
        args = args + ["--out", str(tmp_path / "run")]
    if args[0] == "measure":
        args = args + ["--out", str(tmp_path / "m.csv")]
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_group_help_imports_neither_torch_nor_the_commands():
    import subprocess
    import sys

    script = ("import sys\nfrom loafing.cli import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'pandas') "
              "or m.startswith('loafing.cli.')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    *help_lines, imported = result.stdout.strip().splitlines()
    assert imported == "[]"
    from loafing.cli import COMMANDS
    assert all(any(line.strip().startswith(name + " ") for line in help_lines) for name in COMMANDS)


def click_context(group):
    import click
    return click.Context(group)


def test_the_group_lists_each_command_with_its_own_short_help():
    import click

    from loafing.cli import COMMANDS, cli

    ctx = click_context(cli)
    for name, (_, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command.name == name
        assert click.Command(name, help=short).get_short_help_str(200) == command.get_short_help_str(200), name


def test_evaluation_options_are_the_eval_config_fields_with_their_defaults():
    from loafing.cli import COMMANDS, cli
    from loafing.eval_config import EvalConfig, eval_option_specs

    defaults = EvalConfig()
    for name in ("measure", "destruct", "inside-vs-alone"):
        params = {p.name: p for p in cli.get_command(click_context(cli), name).params}
        for spec in eval_option_specs():
            if spec.name == "space" and name != "measure":
                assert "space" not in params  # destruct and inside-vs-alone evaluate their own plans
                continue
            assert params[spec.name].default == getattr(defaults, spec.name) and params[spec.name].help == spec.help
        assert {"--seed", "--calib-seed"} <= set(params["calib_seed"].opts)
        assert params["recalibrate"].secondary_opts == ["--no-recalibrate"]
    assert "lambda-ablation" not in COMMANDS


@pytest.mark.parametrize("settings, message", [
    ({"calib_size": 0}, "--calib-size must be at least 1, got 0"),
    ({"calib_seed": -1}, "--calib-seed must be an integer from 0 to 2^63 - 1"),
    ({"space": "all"}, "unknown space 'all'; valid choices: ordered, uniform"),
    ({"batch_size": "64"}, "evaluation setting batch_size must be int, got '64'"),
    ({"recalibrate": 1}, "evaluation setting recalibrate must be bool, got 1"),
])
def test_an_eval_config_checks_its_settings(settings, message):
    from loafing.errors import LoafingError
    from loafing.eval_config import EvalConfig

    with pytest.raises(LoafingError, match="^" + message.replace("^", r"\^").replace("(", r"\(")):
        EvalConfig(**settings)


def test_seed_and_calib_seed_both_set_the_calibration_seed(run_cli, trained_runs, tmp_path):
    for flag, seed in (("--seed", 3), ("--calib-seed", 5)):
        out = tmp_path / f"{seed}.csv"
        code, _, err = run_cli("measure", "--ckpt", trained_runs["ct"] / "checkpoint.pt", flag, seed, "--calib-size",
                               16, "--plan", "[1] [4] [7]", "--out", out, "--quiet", "--device", "cpu")
        assert code == 0, err
        df = pd.read_csv(out)
        assert df["calib_seed"].tolist() == [seed] and df["calib_size"].tolist() == [16]


def test_models_lists_a_declared_layout_without_building_the_network(run_cli):
    from loafing.models import ModelSpec, body_layout, register_model, unregister_model

    def build(num_classes, width_mult):
        raise AssertionError("`loafing models` built a network")

    register_model(ModelSpec("never-built", build, "a model listed, never built", "cifar", "fc.weight",
                             declared_layout=body_layout((2, 3), fixed=(3,))))
    try:
        code, out, err = run_cli("models")
    finally:
        unregister_model("never-built")
    assert code == 0, err
    listed = out.split("never-built: a model listed, never built\n")[1].splitlines()[0]
    assert listed.strip() == "stages 2-3, main plan [1,2] [3,4,5], skippable [1, 2, 4, 5]"


def test_models_summarises_a_deep_networks_blocks_as_ranges(run_cli):
    code, out, err = run_cli("models")
    assert code == 0, err
    lines = out.splitlines()
    deep = lines[lines.index("resnet110-cifar: " + MODELS["resnet110-cifar"].description) + 1].strip()
    # 18 blocks per stage; only the first blocks of stages 2 and 3 change shape
    assert deep == "stages 18-18-18, main plan of blocks 1-18 | 19-36 | 37-54, skippable all but 19, 37"
    dense = lines[lines.index("densenet201: " + MODELS["densenet201"].description) + 1].strip()
    assert dense.startswith("stages 6-12-48-32, main plan of blocks 1-6 | 7-18 | 19-66 | 67-98, skippable from")
    assert max(len(line) for line in lines if line.startswith("    stages")) < 150


def test_every_declared_layout_is_the_built_networks():
    import torch

    from loafing.models import MODELS, create_model

    for name, spec in MODELS.items():
        if spec.declared_layout is not None:
            with torch.device("meta"):  # create_model compares the declared layout with the built one
                assert create_model(name, 10).layout == spec.declared_layout


def test_models_builds_no_registered_network(run_cli, monkeypatch):
    """Every built-in model declares its layout, so `loafing models` lists them all without building one."""
    import loafing.models.registry as registry

    def refuse(name):
        raise AssertionError(f"`loafing models` built {name}")

    monkeypatch.setattr(registry, "_layout", refuse)
    code, out, err = run_cli("models")
    assert code == 0, err
    assert out.count("    stages ") == len(registry.MODELS)
