"""Foreign checkpoints, checked against an independent functional implementation of the CIFAR ResNet."""
import torch
import torchvision

from loafing.checkpoint import load_model
from loafing.data import make_loader, seeded_subset
from loafing.eval_config import EvalConfig
from loafing.measure import measure_plans
from loafing.models import create_model
from loafing.plans import uniform_space
from reference_resnet import MEAN, STD, functional_resnet_cifar


def akamaster_checkpoint(tmp_path, trained_runs):
    """An akamaster-format file: {'best_prec1', 'state_dict'} with 'module.'-prefixed keys."""
    ours = load_model(trained_runs["st"] / "checkpoint.pt").model
    sd = {f"module.{k}": v.clone() for k, v in ours.net.state_dict().items()}
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"best_prec1": 91.73, "state_dict": sd}, path)
    return path, {k[len("module."):]: v for k, v in sd.items()}


def test_akamaster_checkpoint_uniform_subnetworks_match_independent_implementation(tmp_path, trained_runs, digits):
    path, sd = akamaster_checkpoint(tmp_path, trained_runs)
    loaded = load_model(path, "resnet20-cifar")
    assert loaded.source == "akamaster"
    plans = uniform_space(loaded.model.layout)
    x_test = torch.stack([x for x, _ in digits.test])
    y_test = torch.tensor([int(y) for _, y in digits.test])
    calib = list(x for x, _ in make_loader(seeded_subset(digits.train_plain, 300, 7), 100))

    for recalibrate in (False, True):
        evaluation = EvalConfig(calib_size=300, calib_seed=7, recalibrate=recalibrate, batch_size=100, device="cpu")
        df = measure_plans(loaded, plans, digits, evaluation, progress=False)
        assert list(df["depths"]) == ["1-1-1", "2-2-2", "3-3-3"]
        for depth, top1 in zip((1, 2, 3), df["top1"]):
            with torch.no_grad():
                if recalibrate:
                    collected = {}
                    for xb in calib:
                        functional_resnet_cifar(sd, xb, depth, collected, calibrate=True)
                    stats = {k: (torch.stack([m for m, _ in v]).mean(0), torch.stack([v_ for _, v_ in v]).mean(0))
                             for k, v in collected.items()}
                else:
                    stats = {k[: -len(".running_mean")]: (v, sd[k.replace("running_mean", "running_var")])
                             for k, v in sd.items() if k.endswith("running_mean")}
                logits = functional_resnet_cifar(sd, x_test, depth, stats)
            expected = 100.0 * (logits.argmax(1) == y_test).sum().item() / len(y_test)
            assert abs(top1 - expected) < 1e-9, (recalibrate, depth, top1, expected)
    # the main network of the trained run is far above chance: the comparison above is meaningful
    assert df.loc[df["is_main"], "top1"].item() > 50


def test_torchvision_state_dict_loads_into_the_staged_model(tmp_path):
    reference = torchvision.models.resnet50(num_classes=12).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model(path, "resnet50")
    assert loaded.source == "torchvision" and loaded.config["num_classes"] == 12
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference((x - MEAN) / STD))


def test_loafing_checkpoint_round_trips_normalization(trained_runs, digits):
    loaded = load_model(trained_runs["ct"] / "checkpoint.pt")
    assert loaded.source == "loafing"
    torch.testing.assert_close(loaded.model.input_mean.flatten(), torch.tensor(digits.mean))
    fresh = create_model("resnet20-cifar", 10)
    assert not torch.equal(fresh.input_mean, loaded.model.input_mean)
