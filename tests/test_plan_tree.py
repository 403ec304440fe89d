import itertools

import pytest
import torch

from loafing.bn import batchnorms
from loafing.data import make_loader, seeded_subset
from loafing.evaluate import evaluate_plans_one_by_one, plan_logits_one_by_one
from loafing.destruct import delete_many, permute
from loafing.models import MODELS, create_model
from loafing.plan_tree import PlanTreeEvaluator, count_block_nodes, evaluate_plans, own_bn_tensors
from loafing.plans import Plan, ordered_space, raw_space, stochastic_space, uniform_space

CPU = torch.device("cpu")


def perturbed(name, **kwargs):
    """A model with non-trivial BN statistics and affine parameters, so recalibration matters."""
    model = create_model(name, 10, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for bn in batchnorms(model):
        bn.running_mean.normal_(0, 0.2, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.data.uniform_(0.5, 1.5, generator=gen)
        bn.bias.data.normal_(0, 0.2, generator=gen)
    return model.eval()


def deletions(layout):
    main = layout.main_plan
    skippable = sorted(layout.skippable)
    plans = []
    for k in (1, 2):
        for gone in itertools.combinations(skippable, k):
            plans.append(Plan(tuple(tuple(b for b in stage if b not in gone) for stage in main.stages)))
    return plans


def permutations(layout):
    plans = []
    for s, stage in enumerate(layout.stages):
        for perm in itertools.permutations(stage[1:]):
            stages = list(layout.stages)
            stages[s] = (stage[0],) + perm
            plans.append(Plan(tuple(stages)))
    return list(dict.fromkeys(plans))


FAMILIES = {"ordered": ordered_space, "uniform": uniform_space, "deletions": deletions,
            "permutations": permutations, "stochastic": lambda layout: stochastic_space(layout)[::9],
            "raw": lambda layout: raw_space(layout)[::9]}


@pytest.fixture(scope="module")
def loaders(digits):
    test = make_loader(seeded_subset(digits.test, 96, 3), 48)
    calib = make_loader(seeded_subset(digits.train_plain, 96, 0), 32)
    return test, calib


@pytest.mark.parametrize("recalibrate", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tree_matches_one_by_one(family, recalibrate, loaders):
    test_loader, calib_loader = loaders
    calib = calib_loader if recalibrate else None
    model = perturbed("resnet20-cifar")
    plans = FAMILIES[family](model.layout)
    if family == "ordered":
        plans = plans[::3]
    evaluator = PlanTreeEvaluator(model, plans, CPU)
    with own_bn_tensors(model):
        if calib is not None:
            evaluator.calibrate(x for x, _ in calib)
        tree_logits = evaluator.logits(test_loader)
    table, predictions = evaluate_plans(model, plans, test_loader, calib, CPU, progress=False, predictions=True)
    reference = evaluate_plans_one_by_one(model, plans, test_loader, calib, CPU, progress=False)
    for i, plan in enumerate(plans):
        expected, labels = plan_logits_one_by_one(model, plan, test_loader, calib, CPU)
        torch.testing.assert_close(tree_logits[i], expected, rtol=0, atol=1e-4)
        assert torch.equal(predictions[i], expected.argmax(1))
    assert table["plan"].tolist() == reference["plan"].tolist()
    assert table["top1"].tolist() == reference["top1"].tolist()  # identical counts
    assert table["top5"].tolist() == reference["top5"].tolist()
    for column in ("loss", "kl"):
        assert (table[column] - reference[column]).abs().max() < 1e-4
    assert table["kl"].min() >= 0


def test_mobilenet_ordered_space_matches_one_by_one(digits, loaders):
    test_loader, calib_loader = loaders
    model = perturbed("mobilenet_v3_large", width_mult=0.5)
    plans = ordered_space(model.layout)[::11]
    table, _ = evaluate_plans(model, plans, test_loader, calib_loader, CPU, progress=False)
    reference = evaluate_plans_one_by_one(model, plans, test_loader, calib_loader, CPU, progress=False)
    assert table["top1"].tolist() == reference["top1"].tolist()
    assert (table["kl"] - reference["kl"]).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(MODELS))
def test_tree_matches_one_by_one_for_every_registered_model(name, loaders):
    """Ordered, deletion and permutation plans of every model: identical top-1 counts, logits within 1e-4."""
    test_loader, calib_loader = loaders
    model = perturbed(name, **({"width_mult": 0.25} if MODELS[name].width_mult else {}))  # narrow: fast
    layout = model.layout
    ordered = ordered_space(layout)
    plans = [ordered[0], ordered[len(ordered) // 3], ordered[-2]]
    if not layout.prefix_only:  # a DenseNet's stages only shorten from the end
        plans += [delete_many(layout, 1, seed=0)[-1].plan, permute(layout, 1, seed=0)[-1].plan]
    evaluator = PlanTreeEvaluator(model, plans, CPU)
    with own_bn_tensors(model):
        evaluator.calibrate(x for x, _ in calib_loader)
        tree_logits = evaluator.logits(test_loader)
    for i, plan in enumerate(plans):
        expected, _ = plan_logits_one_by_one(model, plan, test_loader, calib_loader, CPU)
        torch.testing.assert_close(tree_logits[i], expected, rtol=0, atol=1e-4, msg=f"{name} {plan}")
        assert torch.equal(tree_logits[i].argmax(1), expected.argmax(1))


def test_block_evaluations_equal_the_number_of_tree_nodes(loaders):
    test_loader, calib_loader = loaders
    model = perturbed("resnet20-cifar")
    plans = ordered_space(model.layout)
    calls = []
    for b in model.layout.main_plan.sequence():
        model.block(b).register_forward_hook(lambda m, i, o: calls.append(1))
    evaluate_plans(model, plans, test_loader, calib_loader, CPU, progress=False)
    nodes = count_block_nodes(plans)
    assert nodes == 3 + 9 + 27
    assert len(calls) == nodes * (len(test_loader) + len(calib_loader))
    one_by_one = sum(p.n_blocks for p in plans)
    assert one_by_one == 27 * 6  # mean depth 2 per stage, 3 stages


def test_unique_lower_bound_for_resnet56_is_819():
    layout = create_model("resnet56-cifar", 10).layout
    plans = ordered_space(layout)
    assert count_block_nodes(plans) == 9 + 81 + 729
    assert sum(p.n_blocks for p in plans) == 729 * 15  # about 11,000


def test_model_state_is_untouched(loaders):
    test_loader, calib_loader = loaders
    model = perturbed("resnet20-cifar")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [bn.momentum for bn in batchnorms(model)]
    evaluate_plans(model, uniform_space(model.layout), test_loader, calib_loader, CPU, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [bn.momentum for bn in batchnorms(model)] == momenta
    assert not model.training


def test_plans_without_the_main_network_and_duplicates(loaders):
    test_loader, calib_loader = loaders
    model = perturbed("resnet20-cifar")
    small = uniform_space(model.layout)[0]
    table, _ = evaluate_plans(model, [small, small], test_loader, calib_loader, CPU, progress=False)
    reference = evaluate_plans_one_by_one(model, [small], test_loader, calib_loader, CPU, progress=False)
    assert len(table) == 2 and not table["is_main"].any()
    assert table["top1"].tolist() == reference["top1"].tolist() * 2
    assert table["kl"].iloc[0] == pytest.approx(reference["kl"].iloc[0], abs=1e-4)


def test_kl_against_a_reference_that_another_plan_extends(loaders):
    """KL is taken against `reference`; a plan that extends it is scored once the reference's logits exist."""
    test_loader, calib_loader = loaders
    model = perturbed("resnet20-cifar")
    reference, longer = Plan(((1,), (4,), (7,))), Plan(((1,), (4,), (7, 8)))
    table, _ = evaluate_plans(model, [longer, reference], test_loader, calib_loader, CPU, progress=False,
                              reference=reference)
    ref_logits, _ = plan_logits_one_by_one(model, reference, test_loader, calib_loader, CPU)
    long_logits, _ = plan_logits_one_by_one(model, longer, test_loader, calib_loader, CPU)
    expected = torch.nn.functional.kl_div(long_logits.log_softmax(1), ref_logits.log_softmax(1), log_target=True,
                                          reduction="batchmean").item()
    assert table["is_main"].tolist() == [False, True]
    assert table["kl"].iloc[0] == pytest.approx(expected, abs=1e-5) and expected > 1e-3
    assert table["kl"].iloc[1] == pytest.approx(0, abs=1e-7)
