"""The appendix's baselines and ST's sampling rules: each loss against an independent computation written out
here, raw and stochastic plans, auxiliary heads kept out of the measured network, the figures they feed."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from loafing.checkpoint import load_model, read_checkpoint
from loafing.config import make_train_config
from loafing.errors import LoafingError
from loafing.methods import METHODS, get_method
from loafing.models import MODELS, StagedModel, create_model
from loafing.plans import (SAMPLING_RULES, Plan, get_space, parse_plan, raw_space, stochastic_space,
                           validate_plan)
from loafing.schema import read_table, write_table
from loafing.train import train

torch.backends.cudnn.deterministic = True
BASELINES = ("stochastic-depth", "self-distillation", "layer-supervision", "stage-supervision")


def batch(n=6, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def resnet20():
    torch.manual_seed(0)
    return create_model("resnet20-cifar", 10).train()


def by_hand(model, x, steps):
    """The CIFAR ResNet's forward written out from its layers: step b runs block b, -b its branch without shortcut,
    (b, f) applies f to block b's branch before the addition; a missing block is skipped."""
    net = model.net
    h = F.relu(net.bn1(net.conv1((x - model.input_mean) / model.input_std)))
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3) for b in layer]
    for step in steps:
        index, scale = step if isinstance(step, tuple) else (abs(step), None)
        blk = blocks[index - 1]
        branch = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h)))))
        if scale is not None:
            branch = scale(branch)
        h = F.relu(branch) if isinstance(step, int) and step < 0 else F.relu(branch + blk.shortcut(h))
    return (net.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)) if h.shape[1] == 64 else None), h


def config(method, **kwargs):
    return make_train_config({"model": "resnet20-cifar", "method": method, "num_classes": 10, **kwargs})


# ---------------------------------------------------------------- plans that run a branch alone, other spaces


def test_raw_and_stochastic_plans_round_trip_through_their_strings():
    layout = create_model("resnet20-cifar", 10).layout
    for plans in (raw_space(layout), stochastic_space(layout)):
        assert len(plans) == 2 ** 7 == len(set(plans))  # 7 skippable blocks: 3 + 2 + 2
        for plan in plans:
            assert parse_plan(str(plan)) == plan
            validate_plan(plan, layout)
    assert str(parse_plan("[1b, 3] [4,5b] []")) == "[1b,3] [4,5b] []"
    raw = raw_space(layout)
    assert Plan(((-1, -2, -3), (4, -5, -6), (7, -8, -9))) in raw and Plan(((), (4,), (7,))) in raw
    assert all(b > 0 for plan in stochastic_space(layout) for b in plan.sequence())


@pytest.mark.parametrize("text, message", [
    ("[1,2,3] [4b,5,6] [7,8,9]", "block 4 is not skippable; its branch cannot run without its shortcut"),
    ("[1,1b] [4] [7]", "runs a block more than once"),
    ("[0b] [4] [7]", "a step is a positive block index"),
    ("[1c] [4] [7]", "a step is a positive block index"),
])
def test_bad_branch_only_plans(text, message):
    layout = create_model("resnet20-cifar", 10).layout
    with pytest.raises(LoafingError, match=message):
        validate_plan(parse_plan(text), layout)


def test_spaces_too_large_to_enumerate_are_refused():
    with pytest.raises(LoafingError, match="2\\^25 plans"):
        get_space("raw", create_model("resnet56-cifar", 10).layout)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_branch_alone_and_a_whole_block_by_the_model_match_its_own_block(name):
    model = create_model(name, 10).eval()
    x = model.stem(torch.rand(2, 3, 32, 32))
    if not model.layout.skippable - {stage[0] for stage in model.layout.stages} or model.layout.prefix_only:
        with pytest.raises(LoafingError, match="cannot run a block's residual branch on its own"):
            model.residual(model.layout.main_plan.sequence()[-1], x)
        return
    for b in model.layout.main_plan.sequence():
        if b in model.layout.skippable:
            torch.testing.assert_close(model.residual(b, x), model.block(b)(x), rtol=0, atol=0)
            twice = model.residual(b, x, lambda f: 2 * f)
            once = model.residual(b, x, shortcut=False)
            if name.endswith("-cifar") or name.startswith("resnet"):  # ReLU after the addition
                torch.testing.assert_close(model.residual(b, x, lambda f: 0 * f), F.relu(x))
            else:
                torch.testing.assert_close(twice - model.residual(b, x), once)
            break
        x = model.block(b)(x)


def test_sampling_rules_draw_from_their_spaces():
    layout = create_model("resnet20-cifar", 10).layout
    rng = random.Random(0)
    for rule, space in (("stochastic", stochastic_space), ("raw", raw_space)):
        draws = [SAMPLING_RULES[rule](layout, rng) for _ in range(4000)]
        assert set(draws) <= set(space(layout))
        counts = pd.Series([str(p) for p in draws]).value_counts()
        assert len(counts) > 120 and counts.max() < 3 * 4000 / 128  # all 128, none far above its share
    ordered = {SAMPLING_RULES["ordered"](layout, rng) for _ in range(500)}
    assert len(ordered) == 27


# ---------------------------------------------------------------- each loss against an independent computation


@pytest.mark.parametrize("sampling", ["raw", "stochastic"])
def test_st_with_another_sampling_rule(sampling):
    model, (x, y) = resnet20(), batch()
    step = get_method("st").build(model, config("st", lam=0.7, sampling=sampling, st_step="simple"),
                                  random.Random(3))
    plan = SAMPLING_RULES[sampling](model.layout, random.Random(3))
    with torch.no_grad():
        result = step.loss(x, y)
        main, _ = by_hand(model, x, model.layout.main_plan.sequence())
        sub, _ = by_hand(model, x, plan.sequence())
        ce = F.cross_entropy(main, y)
        p = F.softmax(main, 1)
        kl = (p * (p.log() - F.log_softmax(sub, 1))).sum(1).mean()
    torch.testing.assert_close(result.loss, ce + 0.7 * kl)


def test_st_shared_step_with_a_raw_plan_gives_the_simple_steps_gradients():
    x, y = batch()
    grads = []
    for st_step in ("shared", "simple"):
        model = resnet20()
        step = get_method("st").build(model, config("st", sampling="raw", st_step=st_step), random.Random(5))
        step.loss(x, y).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_survival_probabilities_fall_linearly_and_spare_each_stages_first_block():
    from loafing.methods.baselines import survival_probabilities
    layout = create_model("resnet20-cifar", 10).layout
    expected = {b: 1 - b / 9 * (1 - 0.8) for b in (2, 3, 5, 6, 8, 9)}  # blocks 1, 4 and 7 open their stages
    assert survival_probabilities(layout, 0.8) == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["batch", "row"])
def test_stochastic_depth_loss(mode):
    model, (x, y) = resnet20(), batch()
    step = get_method("stochastic-depth").build(model, config("stochastic-depth", sd_mode=mode, sd_survival=0.5),
                                                random.Random(7))
    torch.manual_seed(11)
    result = step.loss(x, y)
    rng, steps = random.Random(7), []
    torch.manual_seed(11)
    for b in range(1, 10):
        p = 1 - b / 9 * 0.5
        if b in (1, 4, 7):
            steps.append(b)
        elif mode == "batch":
            if rng.random() < p:
                steps.append((b, lambda f, p=p: f / p))
        else:
            mask = torch.empty(len(y), 1, 1, 1).bernoulli_(p) / p
            steps.append((b, lambda f, m=mask: f * m))
    logits, _ = by_hand(model, x, steps)
    torch.testing.assert_close(result.loss, F.cross_entropy(logits, y))
    assert result.kl.item() == 0


def test_stochastic_depth_drops_blocks():
    model, (x, y) = resnet20(), batch()
    step = get_method("stochastic-depth").build(model, config("stochastic-depth", sd_survival=0.5),
                                                random.Random(0))
    with torch.no_grad():
        losses = {round(step.loss(x, y).loss.item(), 5) for _ in range(8)}
    assert len(losses) > 1  # different blocks dropped from step to step


def head_output(head, h):
    feature = torch.flatten(F.adaptive_avg_pool2d(F.relu(head.project[1](head.project[0](h))), 1), 1)
    return feature, head.classifier(feature)


def block_outputs(model, x):
    outputs, h = [], None
    for k in range(1, 10):
        _, h = by_hand(model, x, range(1, k + 1))
        outputs.append(h)
    return outputs


@pytest.mark.parametrize("method, weights", [
    ("stage-supervision", {3: 0.13, 6: 0.4}),  # three stages: the four coefficients' ends
    ("layer-supervision", {1: 0.13 / 3, 2: 0.13 / 3, 3: 0.13 / 3, 4: 0.4 / 3, 5: 0.4 / 3, 6: 0.4 / 3}),
])
def test_supervision_losses(method, weights):
    model, (x, y) = resnet20(), batch()
    step = get_method(method).build(model, config(method), random.Random(0))
    assert sorted(int(k) for k in step.modules.keys()) == sorted(weights)
    step.modules.train()
    result = step.loss(x, y)
    outputs = block_outputs(model, x)
    logits, _ = by_hand(model, x, range(1, 10))
    expected = F.cross_entropy(logits, y)
    for b, w in weights.items():
        expected = expected + w * F.cross_entropy(head_output(step.modules[str(b)], outputs[b - 1])[1], y)
    torch.testing.assert_close(result.loss, expected)
    torch.testing.assert_close(result.ce, F.cross_entropy(logits, y))


def test_stage_coefficients_for_mobilenet_are_the_appendixs():
    from loafing.methods.baselines import supervised_blocks
    layout = create_model("mobilenet_v3_large", 10).layout  # stages of 2, 3, 4, 2, 3 blocks
    assert supervised_blocks(layout, per_layer=False) == pytest.approx({2: 0.13, 5: 0.2, 9: 0.27, 11: 0.4})
    layer = supervised_blocks(layout, per_layer=True)
    assert layer == pytest.approx({1: 0.065, 2: 0.065, 3: 0.2 / 3, 4: 0.2 / 3, 5: 0.2 / 3, 6: 0.0675, 7: 0.0675,
                                   8: 0.0675, 9: 0.0675, 10: 0.2, 11: 0.2})


def test_self_distillation_loss():
    model, (x, y) = resnet20(), batch()
    step = get_method("self-distillation").build(model, config("self-distillation", kd_temperature=2.5),
                                                 random.Random(0))
    step.modules.train()
    result = step.loss(x, y)
    outputs = block_outputs(model, x)
    logits, last = by_hand(model, x, range(1, 10))
    final_feature = last.mean((2, 3))
    t = 2.5
    ces, kd, feat = F.cross_entropy(logits, y), 0.0, 0.0
    for b in (3, 6):
        feature, head_logits = head_output(step.modules[str(b)], outputs[b - 1])
        ces = ces + F.cross_entropy(head_logits, y)
        p = F.softmax(logits / t, 1)
        kd = kd + t * t * (p * (p.log() - F.log_softmax(head_logits / t, 1))).sum(1).mean()
        feat = feat + ((feature - final_feature) ** 2).sum(1).mean()
    torch.testing.assert_close(result.loss, 0.8 * ces + 0.2 * kd + 0.02 * feat)
    torch.testing.assert_close(result.kl, kd)


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_trains_every_registered_model_one_step(method):
    for name in MODELS:
        torch.manual_seed(0)
        model = create_model(name, 10, **({"width_mult": 0.25} if MODELS[name].width_mult else {})).train()
        options = {"sd_survival": 1.0} if method == "stochastic-depth" else {}  # nothing dropped: every block learns
        if method == "stochastic-depth" and type(model).residual is StagedModel.residual:  # no residual branches
            with pytest.raises(LoafingError, match="needs a model that can run a block's residual branch"):
                get_method(method).build(model, make_train_config({"model": name, "method": method,
                                                                   "num_classes": 10}), random.Random(0))
            continue
        step = get_method(method).build(model, make_train_config({"model": name, "method": method, "num_classes": 10,
                                                                  **options}), random.Random(0))
        x, y = batch(4)
        result = step.loss(torch.nn.functional.interpolate(x, 32), y)
        result.loss.backward()
        assert torch.isfinite(result.loss)
        last = model.block(model.layout.main_plan.sequence()[-1])
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
        if step.modules is not None:
            assert all(p.grad is not None for p in step.modules.parameters())


# ---------------------------------------------------------------- heads are training-only; options; resume


def test_auxiliary_heads_stay_out_of_the_measured_network_and_resume_bit_identically(tmp_path,
                                                                                     interrupted_training):
    from loafing.run_state import load_config

    def cfg(out, epochs=2):
        return make_train_config({"model": "resnet20-cifar", "method": "self-distillation", "epochs": epochs,
                                  "lr": 0.1, "train_size": 256, "monitor_calib_size": 32, "device": "cpu",
                                  "out": str(out)})

    train(cfg(tmp_path / "full"), progress=False)
    loaded = load_model(str(tmp_path / "full" / "checkpoint.pt"))
    plain = create_model("resnet20-cifar", 10)
    assert set(loaded.model.state_dict()) == set(plain.state_dict())
    state = read_checkpoint(tmp_path / "full" / "checkpoint.pt")
    assert {k.split(".")[0] for k in state["method_state"]} == {"3", "6"}

    interrupted_training(cfg(tmp_path / "cut"), epoch=2)
    train(load_config(tmp_path / "cut"), progress=False, resume=True)
    cut = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("model", "method_state"):
        assert all(torch.equal(state[part][k], cut[part][k]) for k in state[part]), part


@pytest.mark.parametrize("args, message", [
    (["--method", "ct", "--sampling", "raw"], "--sampling needs --method st"),
    (["--method", "st", "--sd-mode", "row"], "--sd-mode needs --method stochastic-depth"),
    (["--method", "ct", "--kd-temperature", "2"], "--kd-temperature needs --method self-distillation"),
    (["--method", "st", "--sampling", "raw", "--space-size", "6"], "--space-size restricts the ordered space"),
    (["--method", "stochastic-depth", "--sd-survival", "0"], "--sd-survival must be in (0, 1]"),
    (["--method", "stochastic-depth", "--sd-mode", "column"], "valid choices: batch, row"),
])
def test_bad_method_options(run_cli, tmp_path, args, message):
    code, _, err = run_cli("train", "--model", "resnet20-cifar", "--epochs", "1", *args, "--out", tmp_path / "r")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_table_written_before_the_sampling_column_reads_as_ordered(tmp_path):
    from loafing.schema import TABLES
    # A file of then: no sampling column, and none of the method_* columns rows carry today.
    columns = [c for c in TABLES["train_log"].dtypes() if c != "sampling" and not c.startswith("method_")]
    row = {c: 1 for c in columns} | {"run": "r", "model": "m", "method": "st", "dataset": "digits",
                                     "trained_plan": "", "memory_kind": "cpu", "space_size": ""}
    pd.DataFrame([row, row | {"method": "ct"}]).to_csv(tmp_path / "old.csv", index=False)
    table = read_table(tmp_path / "old.csv", "train_log")
    assert table["sampling"].tolist() == ["ordered", ""]


# ---------------------------------------------------------------- the figures and Table r3


def synthetic_results(folder):
    """Tidy measure, destruct and train_log tables of every method (two seeds), with known numbers."""
    layout = create_model("resnet20-cifar", 10).layout
    plans = get_space("uniform", layout)
    runs = [("ct", "ordered"), ("st", "ordered"), ("st", "raw"), ("st", "stochastic"), *((m, "") for m in BASELINES)]
    measure, destruct, log = [], [], []
    for i, (method, sampling) in enumerate(runs):
        for seed in (0, 1):
            ids = {"run": f"{method}-{sampling}-{seed}", "model": "resnet20-cifar", "width_mult": 1.0,
                   "method": method, "lam": 1.0, "seed": seed, "dataset": "digits", "trained_plan": "",
                   "space_size": None, "sampling": sampling if method == "st" else None}
            for j, plan in enumerate(plans):
                main = plan == layout.main_plan
                measure.append(ids | {"plan": str(plan), "depths": plan.depths_str, "n_blocks": plan.n_blocks,
                                      "is_main": main, "top1": 50 + i + 10 * j + seed, "top5": 99.0, "loss": 1.0,
                                      "n_examples": 100, "kl": 0.1, "recalibrated": True, "calib_size": 10,
                                      "calib_seed": 0, "space": "uniform"})
                for mode, n, layers in (("delete-one", 1, "2"), ("delete-many", 2, "2,3"), ("permute", 1, "")):
                    destruct.append(ids | {"mode": mode, "n": n, "layers": layers, "plan": str(plan),
                                           "depths": plan.depths_str, "n_blocks": plan.n_blocks, "is_main": False,
                                           "top1": 40.0, "drop": float(i), "top5": 90.0, "loss": 1.0,
                                           "n_examples": 100, "kl": 0.1, "recalibrated": True, "calib_size": 10,
                                           "calib_seed": 0, "sampled": False})
            for epoch in (1, 2):
                log.append(ids | {"epoch": epoch, "lr": 0.1, "loss": 1.0, "ce": 1.0, "kl": 0.0,
                                  "test_top1_recalibrated": 50.0, "test_loss_recalibrated": 1.0,
                                  "test_top1_running_bn": 50.0, "test_loss_running_bn": 1.0,
                                  "seconds": 10.0 * (i + 1), "examples_per_s": 100.0, "peak_memory_mib": 100.0 + i,
                                  "memory_kind": "cpu_peak_rss"})
    folder.mkdir()
    for name, rows in (("measure", measure), ("destruct", destruct), ("train_log", log)):
        write_table(pd.DataFrame(rows), folder / f"{name}.csv", name)
    return runs, len(plans)


def test_table_r3_and_the_appendix_figures_from_tidy_results(tmp_path):
    from loafing.figures import make_figures
    runs, n_plans = synthetic_results(tmp_path / "results")
    outcomes = {o.name: o for o in make_figures(tmp_path / "results", tmp_path / "figures",
                                                ["fig3", "tabler3", "figr4", "figr5", "figr6", "figr7", "figr8"])}
    assert all(not o.skipped for o in outcomes.values()), {n: o.skipped for n, o in outcomes.items()}
    assert all(path.stat().st_size > 0 for o in outcomes.values() for path in o.paths)
    from loafing.figures import table_methods
    table = table_methods(read_table(tmp_path / "results" / "measure.csv", "measure"),
                          read_table(tmp_path / "results" / "train_log.csv", "train_log"))
    expected_labels = ["CT", "ST", "ST (raw)", "ST (stochastic)", "Stochastic depth", "Self-distillation",
                       "CT+layer supervision", "CT+stage supervision"]
    assert table["method"].tolist() == expected_labels
    for i, (method, sampling) in enumerate(runs):
        row = table[table["method"] == expected_labels[i]].iloc[0]
        tops = np.array([50 + i + 10 * j for j in range(n_plans)], dtype=float)
        subs = tops[:-1]  # the last uniform plan is the main network
        assert float(row["main (%)"]) == pytest.approx(tops[-1] + 0.5, abs=0.01)  # seeds 0 and 1
        assert row["all (%)"] == f"{subs.mean() + 0.5:.2f}±{subs.std():.2f}"
        assert float(row["time (s)"]) == pytest.approx(20.0 * (i + 1), abs=0.01)


def test_appendix_figures_say_what_is_missing(tmp_path):
    from loafing.figures import make_figures
    synthetic_results(tmp_path / "results")
    destruct = read_table(tmp_path / "results" / "destruct.csv", "destruct")
    write_table(destruct[destruct["method"] != "self-distillation"], tmp_path / "results" / "destruct.csv", "destruct")
    measure = read_table(tmp_path / "results" / "measure.csv", "measure")
    write_table(measure[measure["method"] != "st"], tmp_path / "results" / "measure.csv", "measure")
    outcomes = {o.name: o for o in make_figures(tmp_path / "results", tmp_path / "figures", ["figr4", "fig3"])}
    assert outcomes["figr4"].skipped == "needs runs of ct, st and self-distillation (none of self-distillation)"
    assert "at least two sampling rules" in outcomes["fig3"].skipped


def test_every_registered_method_has_a_label_and_a_colour():
    from loafing.figures.style import schemes_of
    from loafing.schema import run_identifiers
    labels = [m.label for m in METHODS.values()]
    assert len(set(labels)) == len(labels)
    # What the figures know of the methods: the styles their rows carry.
    schemes = schemes_of(pd.DataFrame([run_identifiers({"method": m}, "digits") for m in METHODS]))
    scheme_colour, scheme_order = schemes.colour, schemes.order
    assert all(scheme_colour(label).startswith("#") for label in labels)
    assert scheme_order(["ST (raw)", "Stochastic depth", "ST", "CT", "ST-6"]) == \
        ["CT", "ST-6", "ST", "ST (raw)", "Stochastic depth"]


# ---------------------------------------------------------------- the appendix's claims on the committed run


def per_method_subnetworks(measure: pd.DataFrame) -> pd.DataFrame:
    """Per scheme (method, ST's sampling rule): mean over seeds of the sub-networks' top-1 mean and spread."""
    subs = measure[~measure["is_main"]].assign(scheme=measure["method"] + "/" + measure["sampling"])
    per_run = subs.groupby(["scheme", "run"])["top1"].agg(["mean", lambda v: v.std(ddof=0)])
    per_run.columns = ["mean", "std"]
    return per_run.groupby("scheme").mean()


def assert_appendix_claims(results) -> None:
    stats = per_method_subnetworks(read_table(results / "measure.csv", "measure"))
    ordered_st = "st/ordered"
    assert set(stats.index) == {f"{m}/" for m in ("ct", *BASELINES)} | {"st/ordered", "st/stochastic", "st/raw"}
    methods = stats.loc[[f"{m}/" for m in ("ct", *BASELINES)] + [ordered_st]]  # Table r3's rows
    assert methods["mean"].idxmax() == ordered_st and methods["std"].idxmin() == ordered_st, stats
    assert stats.loc["stochastic-depth/", "mean"] > stats.loc["ct/", "mean"], stats
    assert stats.loc[ordered_st, "mean"] > stats.loc["st/raw", "mean"] + 2, stats  # the paper: by 5.77


def test_the_committed_appendix_run_shows_the_papers_ordering():
    from pathlib import Path
    assert_appendix_claims(Path(__file__).resolve().parents[1] / "results" / "appendix-quick")


@pytest.mark.slow
def test_appendix_quick_preset_shows_the_papers_ordering(tmp_path):
    from loafing.reproduce import reproduce
    from loafing.studies import builtin_study
    reproduce(builtin_study("appendix-quick"), tmp_path, device="cpu", progress=False)
    assert_appendix_claims(tmp_path / "results")
