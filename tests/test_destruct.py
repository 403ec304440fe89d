import math

import pandas as pd
import pytest

from loafing.checkpoint import load_model
from loafing.destruct import destroyed_networks, destruct, permute, swaps_needed
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.plans import Layout, parse_plan

MBV3 = Layout(((1, 2), (3, 4, 5), (6, 7, 8, 9), (10, 11), (12, 13, 14)),
              frozenset({2, 4, 5, 7, 8, 9, 11, 13, 14}))

# Paper Appendix Table r2, verbatim: all combinations per number of permuting operations.
TABLE_R2 = {
    1: ["[1,2] [3,5,4] [6,7,8,9] [10,11] [12,13,14]", "[1,2] [3,4,5] [6,8,7,9] [10,11] [12,13,14]",
        "[1,2] [3,4,5] [6,7,9,8] [10,11] [12,13,14]", "[1,2] [3,4,5] [6,9,8,7] [10,11] [12,13,14]",
        "[1,2] [3,4,5] [6,7,8,9] [10,11] [12,14,13]"],
    2: ["[1,2] [3,5,4] [6,8,7,9] [10,11] [12,13,14]", "[1,2] [3,5,4] [6,7,9,8] [10,11] [12,13,14]",
        "[1,2] [3,5,4] [6,9,8,7] [10,11] [12,13,14]", "[1,2] [3,4,5] [6,8,7,9] [10,11] [12,14,13]",
        "[1,2] [3,4,5] [6,7,9,8] [10,11] [12,14,13]", "[1,2] [3,4,5] [6,9,8,7] [10,11] [12,14,13]",
        "[1,2] [3,4,5] [6,8,9,7] [10,11] [12,13,14]", "[1,2] [3,4,5] [6,9,7,8] [10,11] [12,13,14]",
        "[1,2] [3,5,4] [6,7,8,9] [10,11] [12,14,13]"],
    3: ["[1,2] [3,5,4] [6,8,7,9] [10,11] [12,14,13]", "[1,2] [3,5,4] [6,7,9,8] [10,11] [12,14,13]",
        "[1,2] [3,5,4] [6,9,8,7] [10,11] [12,14,13]", "[1,2] [3,5,4] [6,8,9,7] [10,11] [12,13,14]",
        "[1,2] [3,5,4] [6,9,7,8] [10,11] [12,13,14]", "[1,2] [3,4,5] [6,8,9,7] [10,11] [12,14,13]",
        "[1,2] [3,4,5] [6,9,7,8] [10,11] [12,14,13]"],
    4: ["[1,2] [3,5,4] [6,8,9,7] [10,11] [12,14,13]", "[1,2] [3,5,4] [6,9,7,8] [10,11] [12,14,13]"],
}


def test_permutations_reproduce_table_r2_exactly():
    networks = permute(MBV3, max_combos=1000, seed=0)
    groups = {}
    for d in networks:
        groups.setdefault(d.n, set()).add(d.plan)
    assert groups.pop(0) == {MBV3.main_plan}
    assert groups == {n: {parse_plan(p) for p in plans} for n, plans in TABLE_R2.items()}
    assert len(networks) == 24 and not any(d.sampled for d in networks)


def test_group_sizes_for_a_stage_with_three_skippable_layers():
    layout = Layout(((1, 2, 3, 4),), frozenset({2, 3, 4}))
    sizes = pd.Series([d.n for d in permute(layout, 1000, 0)]).value_counts().sort_index().tolist()
    assert sizes == [1, 3, 2]


def test_swaps_needed_is_n_minus_cycles():
    assert swaps_needed((1, 2, 3)) == 0
    assert swaps_needed((2, 1, 3)) == 1
    assert swaps_needed((2, 3, 1)) == 2
    assert swaps_needed((4, 3, 2, 1)) == 2
    assert swaps_needed((2, 3, 4, 1)) == 3


def test_delete_one_and_delete_many_layouts_for_mobilenet():
    one = destroyed_networks(MBV3, "delete-one", 200, 0)
    assert [d.layers for d in one] == ["", "2", "4", "5", "7", "8", "9", "11", "13", "14"]
    assert one[3].plan == parse_plan("[1,2] [3,4] [6,7,8,9] [10,11] [12,13,14]")
    many = destroyed_networks(MBV3, "delete-many", 200, 0)
    assert len(many) == 1 + 2 ** 9 - 1
    counts = pd.Series([d.n for d in many]).value_counts().sort_index()
    assert counts.tolist() == [1] + [math.comb(9, k) for k in range(1, 10)]
    assert many[-1].plan == parse_plan("[1] [3] [6] [10] [12]")
    assert not any(d.sampled for d in many)


def test_delete_many_samples_where_a_k_has_too_many_combinations():
    many = destroyed_networks(MBV3, "delete-many", 50, 3)
    per_k = pd.DataFrame([(d.n, d.sampled, d.layers) for d in many], columns=["n", "sampled", "layers"])
    for k in range(1, 10):
        group = per_k[per_k["n"] == k]
        assert len(group) == min(50, math.comb(9, k))
        assert group["layers"].is_unique
        assert group["sampled"].all() == (math.comb(9, k) > 50)
    again = destroyed_networks(MBV3, "delete-many", 50, 3)
    assert [d.plan for d in again] == [d.plan for d in many]


@pytest.mark.parametrize("layout, mode, max_combos, message", [
    (MBV3, "shuffle", 10, "unknown mode 'shuffle'; valid choices: delete-one, delete-many, permute"),
    (MBV3, "delete-many", 0, "--max-combos must be at least 1"),
    (Layout(((1,), (2,)), frozenset()), "delete-one", 10, "no deletable"),
    (Layout(((1,), (2,)), frozenset()), "permute", 10, "no deletable"),
])
def test_bad_destruct_input(layout, mode, max_combos, message):
    with pytest.raises(LoafingError, match=message):
        destroyed_networks(layout, mode, max_combos, 0)


def test_large_permutation_spaces_are_sampled():
    layout = Layout((tuple(range(1, 10)), tuple(range(10, 19))), frozenset(range(1, 19)) - {10})
    networks = permute(layout, max_combos=5, seed=0)
    by_n = pd.Series([d.n for d in networks]).value_counts()
    assert (by_n <= 5).all() and by_n.index.max() >= 10
    assert all(d.sampled for d in networks)
    assert len({d.plan for d in networks}) == len(networks)


@pytest.mark.parametrize("mode", ["delete-one", "permute"])
def test_destruct_on_a_trained_run(trained_runs, digits, mode):
    loaded = load_model(trained_runs["st"] / "checkpoint.pt")
    df = destruct(loaded, digits, mode, EvalConfig(calib_size=256, calib_seed=0, batch_size=256, device="cpu"),
                  max_combos=10, progress=False)
    intact = df[df["n"] == 0]
    assert len(intact) == 1 and intact["is_main"].item() and intact["drop"].item() == 0
    assert (df["drop"] == intact["top1"].item() - df["top1"]).all()
    if mode == "delete-one":
        assert df["layers"].tolist()[1:] == [str(b) for b in sorted(loaded.model.layout.skippable)]
        assert (df["n_blocks"][1:] == 8).all()
    else:
        # resnet20-cifar: stage 1 permutes 3 skippable blocks, stages 2 and 3 two each: 6 * 2 * 2 plans
        assert len(df) == 24 and df["plan"].is_unique


def test_destruct_cli(run_cli, trained_runs, tmp_path):
    out = tmp_path / "d.csv"
    code, stdout, _ = run_cli("destruct", "--ckpt", trained_runs["ct"] / "checkpoint.pt",
                              "--mode", "delete-many", "--max-combos", 5, "--calib-size", 128, "--out", out,
                              "--quiet")
    assert code == 0
    df = pd.read_csv(out)
    for column in ("model", "method", "mode", "n", "layers", "plan", "top1", "drop", "recalibrated", "sampled"):
        assert column in df.columns
    assert df["n"].max() == 7 and (df["mode"] == "delete-many").all()
    assert df.groupby("n").size().tolist() == [1, 5, 5, 5, 5, 5, 5, 1]
    median_k1 = df[df["n"] == 1]["drop"].median()
    assert f"{median_k1:.2f}" in stdout
    # the summary says what its numbers are: drops in points per number of layers deleted
    assert "top-1 drop in percentage points (main network's top-1 minus the destroyed network's) per n, the number " \
           "of layers deleted:" in stdout


@pytest.mark.parametrize("args, message", [
    (["--mode", "shuffle"], "unknown mode 'shuffle'; valid choices: delete-one, delete-many, permute"),
    (["--mode", "permute", "--max-combos", "0"], "--max-combos must be at least 1"),
])
def test_destruct_cli_bad_input(run_cli, trained_runs, tmp_path, args, message):
    out = tmp_path / "d.csv"
    code, _, stderr = run_cli("destruct", "--ckpt", trained_runs["ct"] / "checkpoint.pt",
                              *args, "--out", out, "--quiet")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr
    assert not out.exists()
