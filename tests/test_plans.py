import collections
import random

import pytest

from loafing.errors import LoafingError
from loafing.models import MODELS, create_model
from loafing.plans import (Layout, Plan, get_space, ordered_space, parse_plan, sample_ordered_plan,
                           uniform_space, validate_plan)

MBV3 = Layout(((1, 2), (3, 4, 5), (6, 7, 8, 9), (10, 11), (12, 13, 14)),
              frozenset({2, 4, 5, 7, 8, 9, 11, 13, 14}))


@pytest.fixture(scope="module")
def layouts():
    return {name: create_model(name, 10).layout for name in MODELS}


def test_space_sizes_match_paper(layouts):
    assert len(ordered_space(layouts["mobilenet_v3_large"])) == 144
    assert len(ordered_space(layouts["resnet56-cifar"])) == 729
    assert len(ordered_space(layouts["resnet20-cifar"])) == 27
    assert layouts["mobilenet_v3_large"] == MBV3


def test_plan_strings_round_trip_for_every_plan(layouts):
    for layout in layouts.values():
        plans = ordered_space(layout) if len(layout.stages) <= 5 and layout.n_blocks <= 27 else uniform_space(layout)
        for plan in plans + [layout.main_plan]:
            assert parse_plan(str(plan)) == plan
            validate_plan(plan, layout)


def test_canonical_form_and_depths():
    plan = parse_plan(" [1] [3,4]  [6,7,8] [10] [12, 13] ")
    assert str(plan) == "[1] [3,4] [6,7,8] [10] [12,13]"
    assert plan.depths_str == "1-2-3-1-2"
    assert plan.n_blocks == 9
    assert plan.sequence() == (1, 3, 4, 6, 7, 8, 10, 12, 13)


def test_uniform_space_is_resnet_k_inside_resnet56(layouts):
    plans = uniform_space(layouts["resnet56-cifar"])
    assert [p.depths_str for p in plans] == [f"{k}-{k}-{k}" for k in range(1, 10)]
    mbv3 = uniform_space(MBV3)
    assert [p.depths_str for p in mbv3] == ["1-1-1-1-1", "2-2-2-2-2", "2-3-3-2-3", "2-3-4-2-3"]


@pytest.mark.parametrize("text, message", [
    ("[2] [3,4,5] [6,7,8,9] [10,11] [12,13,14]", "block 1 is not skippable and cannot be dropped"),
    ("[1,2] [4,3,5] [6,7,8,9] [10,11] [12,13,14]", "block 3 is not skippable and cannot be moved"),
    ("[1,2] [3,4,5,6] [7,8,9] [10,11] [12,13,14]", "block 6 is not in stage 2"),
    ("[1,2,2] [3,4,5] [6,7,8,9] [10,11] [12,13,14]", "more than once"),
    ("[1,2] [3,4,5] [6,7,8,9] [10,11]", "has 4 stages but the model has 5"),
])
def test_invalid_plans_are_rejected(text, message):
    with pytest.raises(LoafingError, match=message.replace("[", r"\[")):
        validate_plan(parse_plan(text), MBV3)


def test_permuting_and_deleting_skippable_blocks_is_valid():
    validate_plan(parse_plan("[1,2] [3,5,4] [6,9,7,8] [10] [12,14]"), MBV3)


@pytest.mark.parametrize("text", ["", "1,2 3", "[1,2] [a]", "[1,2] x [3]", "[1,-2]"])
def test_malformed_plan_strings(text):
    with pytest.raises(LoafingError, match="invalid plan string"):
        parse_plan(text)


def test_unknown_space():
    with pytest.raises(LoafingError, match="valid choices: ordered, uniform"):
        get_space("random", MBV3)


def test_st_sampler_draws_depths_uniformly_and_independently():
    rng = random.Random(0)
    draws = [sample_ordered_plan(MBV3, rng) for _ in range(20000)]
    assert all(p.stages[s] == MBV3.stages[s][: p.depths[s]] for p in draws for s in range(5))
    for s, n in enumerate(MBV3.stage_sizes):
        counts = collections.Counter(p.depths[s] for p in draws)
        assert set(counts) == set(range(1, n + 1))
        assert all(abs(c / len(draws) - 1 / n) < 0.015 for c in counts.values())
    # independence: the joint frequency of two stages factorizes
    joint = collections.Counter((p.depths[1], p.depths[2]) for p in draws)
    assert len(joint) == 12
    assert all(abs(c / len(draws) - 1 / 12) < 0.015 for c in joint.values())
    assert len(set(draws)) == 144


def test_plan_is_hashable_and_comparable():
    assert Plan(((1,), (3,))) == parse_plan("[1] [3]")
    assert len({parse_plan("[1] [3]"), Plan(((1,), (3,)))}) == 1
