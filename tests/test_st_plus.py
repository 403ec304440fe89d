"""ST++'s ingredients (loafing/methods/st_plus.py): at its defaults it is ST, its K-sub-network step is K separate
forwards, each sub-network gets its own resize of the original batch, and its options are checked and listed."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from loafing.bn import frozen_bn_stats
from loafing.cli import cli
from loafing.config import make_train_config
from loafing.errors import LoafingError
from loafing.methods import check_method, get_method
from loafing.methods.st_plus import ST_PLUS_OPTIONS, Distillation, forward_main_and_subnetworks, st_plus_terms
from loafing.models import create_model, get_spec
from loafing.plans import SAMPLING_RULES, SPACES, get_space, parse_plan

MODEL_ARGS = {"resnet20-cifar": {}, "mobilenet_v3_large": {"width_mult": 0.5}}


def st_config(method, model="resnet20-cifar", **options):
    return make_train_config(dict(model=model, method=method, **MODEL_ARGS.get(model, {}), **options))


@pytest.mark.parametrize("model_name", list(MODEL_ARGS))
@pytest.mark.parametrize("st_step", ["shared", "simple"])
def test_st_plus_at_its_defaults_trains_the_same_weights_as_st(model_name, st_step):
    torch.manual_seed(0)
    base = create_model(model_name, 10, **MODEL_ARGS[model_name]).train()
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(3)]
    weights = {}
    for method in ("st", "st++"):
        model = copy.deepcopy(base)
        step = get_method(method).build(model, st_config(method, model_name, st_step=st_step), random.Random(5))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)  # the same dropout masks (MobileNetV3's head) in both
        for x, y in batches:
            optimizer.zero_grad()
            step.loss(x, y).loss.backward()
            optimizer.step()
        weights[method] = model.state_dict()
    assert any(not torch.equal(weights["st"][k], base.state_dict()[k]) for k in weights["st"])  # it did train
    for key, value in weights["st"].items():
        assert torch.equal(value, weights["st++"][key]), key


def reference_step(model, x, y, subs, lam, reduction):
    """K separate forwards, written out: main CE, then each sub-network on its own input without touching the
    running statistics, KL(main || sub) with the main network detached."""
    main = model(x)
    ce = F.cross_entropy(main, y)
    teacher = F.softmax(main.detach(), 1)
    kls = []
    for plan, inputs in subs:
        with frozen_bn_stats(model):
            kls.append(F.kl_div(F.log_softmax(model(inputs, plan), 1), teacher, reduction="batchmean"))
    kl = sum(kls) / (len(kls) if reduction == "mean" else 1)
    return ce + lam * kl


@pytest.mark.parametrize("st_step", ["shared", "simple"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_k_subnetwork_step_equals_k_separate_forwards_in_float64(st_step, reduction):
    torch.manual_seed(0)
    base = create_model("resnet20-cifar", 10).train().double()
    x, y = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    small = F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True)
    # Plans leaving the main network in stage 1, in stage 2 and never; the main plan on a smaller input.
    subs = [(parse_plan("[1] [4,5] [7]"), x), (parse_plan("[1,2,3] [4] [7,8]"), x), (base.layout.main_plan, x),
            (parse_plan("[1,2] [4,5,6] [7]"), small), (base.layout.main_plan, small)]
    results = []
    for compute in ("reference", "st++"):
        model = copy.deepcopy(base)
        if compute == "reference":
            loss = reference_step(model, x, y, subs, 0.7, reduction)
        else:
            main, sub = forward_main_and_subnetworks(model, x, subs, st_step == "shared")
            loss = st_plus_terms(main, sub, y, 0.7, Distillation(reduction=reduction)).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}, model.state_dict()))
    (l1, g1, s1), (l2, g2, s2) = results
    assert abs(l1 - l2) <= 1e-12 * abs(l1)
    for name in g1:
        assert (g1[name] - g2[name]).abs().max() <= 1e-10 * max(1.0, g1[name].abs().max().item()), name
    for name in s1:  # running statistics: the main network's only
        assert torch.allclose(s1[name].double(), s2[name].double(), rtol=0, atol=1e-12), name


def test_normalized_logits_kl_and_temperature_match_their_definition():
    torch.manual_seed(0)
    main, sub, y = torch.randn(6, 10) * 4 + 2, torch.randn(6, 10) * 3, torch.randint(0, 10, (6,))

    def norm(z):  # zero mean, unit (biased) variance over the classes, times the amplitude
        return (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-7) * 2.0
    t = 3.0
    p, q = F.softmax(norm(main) / t, 1), F.softmax(norm(sub) / t, 1)
    expected_kl = (p * (p.log() - q.log())).sum(1).mean() * t * t
    for ce_logits, expected_ce in (("raw", F.cross_entropy(main, y)), ("normalized", F.cross_entropy(norm(main), y))):
        how = Distillation(kl_logits="normalized", ce_logits=ce_logits, amplitude=2.0, temperature=t)
        result = st_plus_terms(main, [sub], y, 0.5, how)
        assert torch.allclose(result.kl, expected_kl, atol=1e-5)
        assert torch.allclose(result.loss, expected_ce + 0.5 * expected_kl, atol=1e-5)


@pytest.mark.parametrize("sub_depth", ["sampled", "full"])
def test_each_subnetwork_sees_its_own_resize_of_the_original_batch_normalized_once(sub_depth):
    torch.manual_seed(0)
    model = create_model("resnet20-cifar", 10).train()
    # A one-pixel checkerboard per channel, far from the normalization's mean: resizing it twice, or normalizing it
    # twice, gives another image.
    board = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    x = torch.stack([board * 0.9 + 0.05, 1 - board * 0.8, board * 0.3 + 0.6]).float().expand(2, 3, 32, 32).clone()
    seen = []
    model.stem_modules()[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    config = st_config("st++", subnets=4, sub_resize_min=0.43, st_step="simple", sub_depth=sub_depth)
    get_method("st++").build(model, config, random.Random(3)).loss(x, torch.tensor([0, 1]))
    mean, std = model.input_mean, model.input_std
    assert len(seen) == 5 and seen[0].shape == x.shape and torch.allclose(seen[0], (x - mean) / std, atol=1e-6)
    sides = [s.shape[-1] for s in seen[1:]]
    assert all(13 <= side <= 32 for side in sides) and len(set(sides)) >= 3, sides

    def resize(image, side):
        return F.interpolate(image, size=(side, side), mode="bilinear", antialias=True) if side != 32 else image
    for k, side in enumerate(sides, start=1):
        once = (resize(x, side) - mean) / std
        assert torch.allclose(seen[k], once, atol=1e-5), (k, side)
        assert not torch.allclose(seen[k], (once - mean) / std, atol=1e-2)  # normalized twice: detectable
        if k > 1 and sides[k - 2] not in (side, 32):  # resized from the previous sub-network's input: detectable
            assert not torch.allclose(seen[k], (resize(resize(x, sides[k - 2]), side) - mean) / std, atol=1e-2)
    assert any(sides[k - 1] not in (sides[k], 32) for k in range(1, len(sides)))  # that case did occur


def test_space3_is_the_official_codes_restricted_space_and_refused_elsewhere():
    layout = get_spec("resnet50").layout()  # stages 3-4-6-3
    plans = get_space("space3", layout)
    assert sorted(p.depths for p in plans) == sorted((3, a, b, 3) for a in (3, 4) for b in (3, 4, 5, 6))
    assert "space3" in SPACES
    drawn = {SAMPLING_RULES["space3"](layout, random.Random(s)) for s in range(200)}
    assert drawn == set(plans)
    with pytest.raises(LoafingError, match="four-stage"):
        get_space("space3", get_spec("resnet20-cifar").layout())
    with pytest.raises(LoafingError, match="four-stage"):
        check_method(st_config("st++", sampling="space3"))


@pytest.mark.parametrize("options, flag", [
    ({"subnets": 0}, "--subnets"), ({"subnets": 33}, "--subnets"), ({"sub_resize_min": 0.0}, "--sub-resize-min"),
    ({"sub_resize_min": 1.5}, "--sub-resize-min"), ({"temperature": 0.0}, "--temperature"),
    ({"amplitude": -1.0}, "--amplitude"), ({"kl_logits": "cosine"}, "raw, normalized"),
    ({"subnet_reduction": "max"}, "mean, sum"), ({"sub_depth": "none"}, "sampled, full")])
def test_out_of_range_options_are_one_line_errors(options, flag):
    with pytest.raises(LoafingError) as error:
        st_config("st++", **options)
    assert flag in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("options, text", [
    ({"sub_depth": "full"}, "--sub-resize-min below 1"),
    ({"sub_depth": "full", "sub_resize_min": 0.5, "sampling": "stochastic"}, "samples no depth"),
    ({"ce_logits": "normalized"}, "needs --kl-logits normalized"),
    ({"amplitude": 2.0}, "needs --kl-logits normalized")])
def test_meaningless_combinations_are_refused_before_training(options, text):
    with pytest.raises(LoafingError, match=text) as error:
        check_method(st_config("st++", **options))
    assert "\n" not in str(error.value)
    with pytest.raises(LoafingError, match="needs --method st\\+\\+"):
        st_config("st", subnets=4)


def test_every_st_plus_option_is_listed_by_loafing_methods():
    output = CliRunner().invoke(cli, ["methods"]).output
    listed = output[output.index("st++ (ST++)"):]
    for spec in ST_PLUS_OPTIONS:
        assert spec.flag in listed, spec.flag
    assert "space3" in output


def test_the_ablation_table_compares_each_arm_with_st_by_seed_and_by_plan():
    import pandas as pd
    from loafing.figures.ablation import table_ablation
    plans = ["[1] [3]", "[1,2] [3]", "[1] [3,4]"]
    rows, log = [], []
    arms = {"ct": ("ct", "conventional", 0, 0.0), "st": ("st", "stimulative", 1, 0.0),
            "st-k4": ("st++", "stimulative", 6, 2.0)}
    for arm, (method, role, order, gain) in arms.items():
        for seed in (0, 1, 2):
            run = f"{arm}-seed{seed}"
            lift = seed if arm == "st-k4" else 0  # st-k4's lead over st grows with the seed: intervals of width > 0
            base = dict(run=run, model="m", width_mult=1.0, method=method, method_label=method.upper(),
                        method_colour="#000000", method_role=role, method_order=order, seed=seed, dataset="d",
                        trained_plan="")
            rows.append({**base, "plan": "[1,2] [3,4]", "is_main": True, "top1": 90.0 + gain + seed + lift,
                         "loss": 0.3})
            rows += [{**base, "plan": p, "is_main": False, "top1": 70.0 + 5 * i + gain * (i + 1) + seed + lift,
                      "loss": 1.0} for i, p in enumerate(plans)]
            log.append({**base, "epoch": 1, "examples_per_s": 100.0 / (1 + order / 6), "peak_memory_mib": 10.0 + order,
                        "memory_kind": "cpu_peak_rss"})
            # a second epoch, 3x slower in one run of ST: it shared the machine with other work
            slowed = 3 if (arm, seed) == ("st", 1) else 1
            log.append({**log[-1], "epoch": 2, "examples_per_s": log[-1]["examples_per_s"] / slowed})
    table = table_ablation(pd.DataFrame(rows), pd.DataFrame(log)).set_index("arm")
    assert list(table.index) == ["ct", "st", "st-k4"] and (table["seeds"] == 3).all()
    half = 4.302653 / 3 ** 0.5  # t(0.975, 2) times the standard error of three differences whose std is 1
    # main networks, same seed: st-k4 leads st by 2, 3 and 4 points
    assert table.loc["st-k4", "main − st, same seed"] == pytest.approx(3.0)
    assert table.loc["st-k4", "(95% CI)"] == f"[{3 - half:.2f}, {3 + half:.2f}]"
    # per plan (seed means), st-k4 leads st by 2 + 1, 4 + 1 and 6 + 1 points: described, not tested
    assert table.loc["st-k4", "sub-networks − st, same plan (mean)"] == pytest.approx(5.0)
    assert table.loc["st-k4", "same plan (range)"] == "+3.00 to +7.00"
    # per seed (means over the three plans), st-k4 leads st by 4, 5 and 6 points
    assert table.loc["st-k4", "same seed (95% CI)"] == f"[{5 - half:.2f}, {5 + half:.2f}]"
    assert table.loc["st", "same plan (range)"] == "–" and table.loc["st", "(95% CI)"] == "–"
    assert table.loc["st-k4", "time/step vs st"] == pytest.approx((1 + 6 / 6) / (1 + 1 / 6))  # fastest epochs
    assert table.loc["st", "sub-networks"] == "76.00 ± 4.08"  # seeds' means 75, 76, 77; population std of 70, 75, 80
    two_seeds = table_ablation(pd.DataFrame(rows).query("seed < 2")).set_index("arm")
    assert two_seeds.loc["st-k4", "(95% CI)"] == "–" and two_seeds.loc["st-k4", "same seed (95% CI)"] == "–"


def test_a_variant_run_keeps_its_variant_across_a_resume_and_a_collection(tmp_path, interrupted_training):
    """Rows written before the variant column existed (in a checkpoint, in a run's CSVs) get the run's variant."""
    import pandas as pd

    from loafing.run_state import load_config
    from loafing.schema import read_table
    from loafing.study_results import collect_results
    from loafing.train import train

    out = tmp_path / "k2"
    config = make_train_config(dict(model="resnet20-cifar", method="st++", subnets=2, epochs=2, lr=0.1, train_size=64,
                                    batch_size=32, monitor_calib_size=32, kl_every=1, kl_plans=2, kl_probe_size=32,
                                    device="cpu", out=str(out)))
    interrupted_training(config, epoch=2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for row in state["log_rows"] + state["kl_rows"]:  # as an older version wrote them
        row.pop("variant")
    torch.save(state, out / "checkpoint.pt")
    train(load_config(out), progress=False, resume=True)
    log = pd.read_csv(out / "train_log.csv", keep_default_na=False)
    assert log["epoch"].tolist() == [1, 2] and set(log["variant"]) == {"subnets=2"}
    assert set(pd.read_csv(out / "kl_trajectory.csv", keep_default_na=False)["variant"]) == {"subnets=2"}

    old = read_table(out / "train_log.csv", "train_log").drop(columns=["variant"])
    old.to_csv(out / "train_log.csv", index=False)  # a run folder evaluated before the column existed
    assert set(read_table(out / "train_log.csv", "train_log")["variant"]) == {""}
    written = collect_results([out], tmp_path / "results")
    assert set(read_table(written["train_log"], "train_log")["variant"]) == {"subnets=2"}
