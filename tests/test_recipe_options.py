"""The ST++ recipe's options, each on its own: Nesterov momentum, the cosine schedule stepped per iteration, the main
network's BN statistics re-estimated every epoch, training crops smaller than the test crop."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from loafing.bn import recalibrate_bn
from loafing.config import make_train_config
from loafing.data import calibration_images, load_dataset, make_loader
from loafing.errors import LoafingError
from loafing.train import build_run, train, train_one_epoch

SMALL = dict(model="resnet20-cifar", dataset="digits", train_size=128, batch_size=64, lr=0.05, seed=1, device="cpu",
             monitor_calib_size=64, epochs=3, weight_decay=1e-4, momentum=0.9)


def test_nesterov_takes_the_look_ahead_step_on_the_first_batch(tmp_path):
    run = build_run(make_train_config({**SMALL, "nesterov": True, "out": str(tmp_path)}))
    x, y = next(iter(run.train_loader))
    loss, _, _ = run.trained(x, y)
    loss.backward()
    before = {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in run.model.named_parameters()}
    run.optimizer.step()
    lr, mu, wd = 0.05, 0.9, 1e-4
    for name, p in run.model.named_parameters():
        weight, grad = before[name]
        g = grad + wd * weight  # first step: the momentum buffer is g, and Nesterov steps along g + mu * buffer
        torch.testing.assert_close(p.detach(), weight - lr * (1 + mu) * g, rtol=1e-5, atol=1e-7, msg=name)


def test_adamw_takes_adams_first_step_with_decoupled_weight_decay(tmp_path):
    run = build_run(make_train_config({**SMALL, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
                                       "out": str(tmp_path)}))
    x, y = next(iter(run.train_loader))
    loss, _, _ = run.trained(x, y)
    loss.backward()
    before = {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in run.model.named_parameters()}
    run.optimizer.step()
    lr, wd, eps = 1e-3, 0.05, 1e-8
    for name, p in run.model.named_parameters():
        weight, grad = before[name]
        # Adam's first step, bias-corrected, is g / (|g| + eps); the decay shrinks the weight, not the gradient.
        expected = weight * (1 - lr * wd) - lr * grad / (grad.abs() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


def test_the_cosine_schedule_steps_per_iteration_when_asked(tmp_path):
    per_epoch = build_run(make_train_config({**SMALL, "out": str(tmp_path / "a")}))
    per_step = build_run(make_train_config({**SMALL, "lr_step": "iteration", "out": str(tmp_path / "b")}))
    for run in (per_epoch, per_step):
        train_one_epoch(run, 1, "test", progress=False)
    steps, total = len(per_step.train_loader), 3 * len(per_step.train_loader)
    assert steps == 2
    assert per_step.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * steps / total)) / 2)
    assert per_epoch.optimizer.param_groups[0]["lr"] == 0.05  # it steps after the epoch, in train()


def test_reestimating_bn_each_epoch_changes_the_checkpoints_statistics_not_the_weights(tmp_path):
    plain = make_train_config({**SMALL, "epochs": 1, "out": str(tmp_path / "plain")})
    reestimated = make_train_config({**SMALL, "epochs": 1, "bn_reestimate": 100, "out": str(tmp_path / "re")})
    train(plain, progress=False)
    train(reestimated, progress=False)
    a = torch.load(tmp_path / "plain" / "checkpoint.pt")["model"]
    b = torch.load(tmp_path / "re" / "checkpoint.pt")["model"]
    run = build_run(plain)
    parameters = {name for name, _ in run.model.named_parameters()}
    for name in parameters:
        assert torch.equal(a[name], b[name]), name
    # Independently: the plain run's weights, BN re-estimated on the same 100 images (the seed + epoch subset).
    run.model.load_state_dict(a)
    images = calibration_images(run.data, 100, plain.seed + 1)
    recalibrate_bn(run.model, None, (x for x, _ in make_loader(images, 256)))
    expected = run.model.state_dict()
    means = [name for name in b if name.endswith("running_mean")]
    assert means and any(not torch.equal(a[name], b[name]) for name in means)
    for name in means:
        torch.testing.assert_close(b[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def image_folder(root, height: int, width: int, seed: int) -> None:
    """Train and test folders of two classes, each holding the same random image of this size."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(seed))
            Image.fromarray(pixels.numpy()).save(root / split / label / "0.png")


def test_training_crops_may_be_smaller_than_the_test_crop_and_evaluation_may_resize_first(tmp_path):
    image_folder(tmp_path, 48, 40, 7)
    data = load_dataset("imagefolder", str(tmp_path), recipe="imagenet", image_size=32, train_image_size=24,
                        eval_resize=36)
    assert data.train[0][0].shape == (3, 24, 24)
    assert data.train_plain[0][0].shape == data.test[0][0].shape == (3, 32, 32)
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "test" / "a" / "0.png"))).permute(2, 0, 1)
    framed = v2.functional.center_crop(v2.functional.resize(raw, 36, antialias=True), 32).float() / 255
    torch.testing.assert_close(data.test[0][0], framed)
    with pytest.raises(LoafingError, match="apply to image data sets"):
        load_dataset("digits", train_image_size=24)


@pytest.mark.parametrize("settings, message", [
    ({"nesterov": True, "momentum": 0.0}, "--nesterov needs a momentum"),
    ({"train_image_size": 24, "data_on_device": True}, "does not combine with --data-on-device"),
    ({"lr_step": "batch"}, "iteration"),
    ({"optimizer": "adamw", "nesterov": True}, "--nesterov is SGD's"),
    ({"optimizer": "adam"}, "valid choices: sgd, adamw"),
    ({"bn_reestimate": -1}, "--bn-reestimate"),
])
def test_recipe_settings_that_cannot_work_are_refused_in_one_line(settings, message, tmp_path):
    from loafing.training_run import check_config

    with pytest.raises(LoafingError, match=message) as caught:
        check_config(make_train_config({**SMALL, **settings, "out": str(tmp_path)}))
    assert "\n" not in str(caught.value)


def test_small_images_take_the_cifar_recipe_whatever_the_models_own(tmp_path):
    from loafing.training_run import training_data

    image_folder(tmp_path, 32, 32, 3)
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "test" / "a" / "0.png"))).permute(2, 0, 1)
    # resnet50's own recipe is ImageNet's; at --image-size 32 the test image is itself, not resized and cropped,
    # and a training image is a pad-4 crop of it (at most 4 pixels shifted), not a RandomResizedCrop.
    data = training_data(make_train_config({"model": "resnet50", "dataset": "imagefolder", "data_dir": str(tmp_path),
                                            "image_size": 32}))
    torch.testing.assert_close(data.test[0][0], raw.float() / 255)
    for _ in range(20):
        crop = (data.train[0][0] * 255).round().to(torch.uint8)
        assert any(torch.equal(crop[:, 4:28, 4:28], view[:, 4 + dy:28 + dy, 4 + dx:28 + dx])
                   for view in (raw, raw.flip(-1)) for dy in range(-4, 5) for dx in range(-4, 5))
    at_224 = training_data(make_train_config({"model": "resnet50", "dataset": "imagefolder", "data_dir": str(tmp_path)}))
    assert at_224.test[0][0].shape == (3, 224, 224)
