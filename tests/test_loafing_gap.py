"""The loafing gap (inside vs alone) paired over test images, for a CT host and an ST host, checked against each
image's prediction computed another way (BN recalibrated by `recalibrate_bn`, logits by `predict`)."""
import math

import pandas as pd
import pytest
import torch

from loafing.bn import preserved_bn_state, recalibrate_bn
from loafing.checkpoint import load_model
from loafing.config import make_train_config
from loafing.data import make_loader, seeded_subset
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.figures import make_figures
from loafing.evaluate import predict
from loafing.inside import inside_vs_alone, load_family, loafing_gaps
from loafing.plans import parse_plan
from loafing.schema import conform, read_table, write_table
from loafing.train import train


@pytest.fixture(scope="module")
def family(trained_runs, tmp_path_factory):
    alone = tmp_path_factory.mktemp("alone") / "r8"
    train(make_train_config({"model": "resnet20-cifar", "dataset": "digits", "plan": "[1] [4] [7]", "epochs": 2,
                             "lr": 0.1, "device": "cpu", "monitor_calib_size": 128, "out": str(alone)}),
          progress=False)
    return [str(trained_runs["ct"] / "checkpoint.pt"), str(trained_runs["st"] / "checkpoint.pt"),
            str(alone / "checkpoint.pt")]


def correct_per_image(path: str, plan_text: str, data, evaluation: EvalConfig) -> torch.Tensor:
    loaded = load_model(path)
    plan = parse_plan(plan_text)
    calib = seeded_subset(data.train_plain, evaluation.calib_size, evaluation.calib_seed)
    with preserved_bn_state(loaded.model):
        recalibrate_bn(loaded.model, plan, (x for x, _ in make_loader(calib, 256)))
        logits, labels = predict(loaded.model, plan, make_loader(data.test, 256), torch.device("cpu"))
    return logits.argmax(1) == labels


def test_the_gap_of_each_host_is_paired_over_the_test_images(family, tmp_path):
    networks, data = load_family(family)
    evaluation = EvalConfig(calib_size=300)
    gaps = loafing_gaps(networks, data, evaluation, progress=False)
    assert sorted(gaps["method"]) == ["ct", "st"]  # an ST host too; ST's main network is nobody's "alone"
    assert set(gaps["depths"]) == {"1-1-1"} and set(gaps["alone_run"]) == {"r8"}

    measured = inside_vs_alone(networks, data, evaluation, progress=False).set_index(["run", "depths"])["top1"]
    alone = correct_per_image(family[2], "[1] [4] [7]", data, evaluation)
    for _, row in gaps.iterrows():
        inside = correct_per_image(family[0 if row["method"] == "ct" else 1], row["plan"], data, evaluation)
        n = len(inside)
        b = int((inside & ~alone).sum())  # right inside only
        c = int((~inside & alone).sum())  # right alone only
        gap = 100 * (b - c) / n
        half = 100 * 1.959964 * math.sqrt(((b + c) - n * ((b - c) / n) ** 2) / (n - 1) / n)
        assert row["n_examples"] == n
        assert row["top1_inside"] == pytest.approx(measured[row["run"], "1-1-1"])
        assert row["top1_alone"] == pytest.approx(measured["r8", "1-1-1"])
        assert row["gap"] == pytest.approx(gap) == pytest.approx(row["top1_inside"] - row["top1_alone"])
        assert (row["gap_ci_low"], row["gap_ci_high"]) == (pytest.approx(gap - half), pytest.approx(gap + half))
        assert row["architecture"] == "ResNet8"

    write_table(gaps, tmp_path / "loafing_gap.csv", "loafing_gap")  # a declared table: it round-trips
    pd.testing.assert_frame_equal(read_table(tmp_path / "loafing_gap.csv", "loafing_gap"), conform(gaps, "loafing_gap"))
    [outcome] = make_figures(tmp_path, tmp_path / "figures", ["gap"])
    table = (tmp_path / "figures" / "gap.md").read_text()
    for _, row in gaps.iterrows():  # one line per host, its gap and CI as the CSV has them
        assert f"{row['gap']:+.2f} [{row['gap_ci_low']:+.2f}, {row['gap_ci_high']:+.2f}]" in table
    assert "| ST |" in table and "| CT |" in table  # each host with its scheme



def test_a_family_whose_networks_expect_other_images_is_refused(family, tmp_path):
    # One set of test images serves the whole family: a network trained on larger images would be measured on
    # images framed for the first one. Ten classes of 32x32 images, as the digits networks classify.
    from PIL import Image

    for split in ("train", "test"):
        for label in range(10):
            (tmp_path / "images" / split / f"c{label}").mkdir(parents=True)
            Image.new("RGB", (32, 32), (25 * label, 80, 120)).save(tmp_path / "images" / split / f"c{label}" / "0.png")
    checkpoint = torch.load(family[2], map_location="cpu", weights_only=True)

    def variant(name: str, image_size: int) -> str:
        torch.save({**checkpoint, "config": {**checkpoint["config"], "image_size": image_size, "run": name}},
                   tmp_path / f"{name}.pt")
        return str(tmp_path / f"{name}.pt")

    images = {"dataset": "imagefolder", "data_dir": str(tmp_path / "images")}
    with pytest.raises(LoafingError) as error:
        load_family([family[0], variant("r8-16px", 16)], **images)
    message = str(error.value)
    assert "r8-16px.pt" in message and "16 px" in message and "32 px" in message and "\n" not in message
    # The recipe's own size given explicitly frames the images as leaving it out does.
    assert len(load_family([family[0], variant("r8-32px", 32)], **images)[0]) == 2
    assert len(load_family([family[0], variant("r8-16px", 16)])[0]) == 2  # digits: one size for every network
