"""The real things: the paper's own Fig. 1 checkpoints (akamaster's files) and CIFAR-10 as JPEG folders, from
../shared. Skipped, with the reason, where ../shared is absent; CI always has it."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.checkpoint import load_model, load_weights, read_checkpoint
from loafing.data import calibration_images, make_loader
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.measure import evaluation_data, measure_plans
from loafing.models import create_model
from loafing.plans import uniform_space
from reference_resnet import MEAN, functional_resnet_cifar

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECKPOINTS = {"resnet20-cifar": SHARED / "checkpoints" / "resnet20-12fca82f.th",
               "resnet32-cifar": SHARED / "checkpoints" / "resnet32-d509ac18.th"}
TARBALL = SHARED / "data" / "cifar10-jpg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

pytestmark = pytest.mark.skipif(not TARBALL.exists() or not all(p.exists() for p in CHECKPOINTS.values()),
                                reason="needs ../shared (the CIFAR-10 JPEG tarball and the akamaster checkpoints)")


@pytest.fixture(scope="session")
def cifar_jpeg(tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEG export, unpacked (about 2 s)."""
    root = tmp_path_factory.mktemp("cifar10-jpg")
    if shutil.which("tar"):  # five times faster than Python's tarfile
        subprocess.run(["tar", "-xzf", str(TARBALL), "-C", str(root)], check=True)
    else:
        with tarfile.open(TARBALL) as archive:
            archive.extractall(root, filter="data")
    return root


@pytest.fixture(scope="session")
def small_cifar(cifar_jpeg, tmp_path_factory) -> Path:
    """50 test images per class (500) and 20 training images per class (200)."""
    return real_folder(cifar_jpeg, tmp_path_factory.mktemp("small-cifar"), {"test": 50, "train": 20})


def test_the_export_is_cifar10(cifar_jpeg):
    for split, count in (("train", 5000), ("test", 1000)):
        assert sorted(p.name for p in (cifar_jpeg / split).iterdir()) == list(CLASSES)
        assert all(len(list((cifar_jpeg / split / c).iterdir())) == count for c in CLASSES)


@pytest.mark.parametrize("model", list(CHECKPOINTS))
def test_akamaster_checkpoints_load_safely_and_classify_the_jpeg_test_images(model, small_cifar):
    raw = torch.load(CHECKPOINTS[model], map_location="cpu", weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in raw["state_dict"])  # saved before BN counted
    loaded = load_model(CHECKPOINTS[model], model)
    assert loaded.source == "akamaster"
    torch.testing.assert_close(loaded.model.input_mean, MEAN)
    data = evaluation_data(loaded, "imagefolder", str(small_cifar))
    df = measure_plans(loaded, [loaded.model.layout.main_plan], data,
                       EvalConfig(calib_size=200, recalibrate=False, batch_size=250, device="cpu"), progress=False)
    assert df["n_examples"].item() == 500 and df["top1"].item() >= 75


def test_only_missing_num_batches_tracked_is_accepted():
    model = create_model("resnet20-cifar", 10).net
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(model, state, "test")  # as PyTorch itself loads files saved before BN counted batches
    del state["layer1.0.bn1.running_mean"]
    with pytest.raises(LoafingError, match=r"1 missing keys.*layer1\.0\.bn1\.running_mean"):
        load_weights(model, state, "test")


def test_a_measure_of_a_32x32_folder_feeds_cifar_models_32x32_and_imagenet_models_224(small_cifar):
    loaded = load_model(CHECKPOINTS["resnet20-cifar"], "resnet20-cifar")
    seen = []
    loaded.model.net.conv1.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[1:])))
    data = evaluation_data(loaded, "imagefolder", str(small_cifar))
    measure_plans(loaded, uniform_space(loaded.model.layout)[:1], data,
                  EvalConfig(calib_size=64, batch_size=100, device="cpu"), progress=False)
    assert seen and set(seen) == {(3, 32, 32)}
    mobilenet = evaluation_data(load_model_like("mobilenet_v3_large"), "imagefolder", str(small_cifar))
    assert tuple(mobilenet.test[0][0].shape) == (3, 224, 224) and mobilenet.image_size == 224
    assert tuple(evaluation_data(loaded, "imagefolder", str(small_cifar), image_size=40).test[0][0].shape) == (3, 40, 40)


def load_model_like(model: str):
    """A checkpoint-shaped stand-in for a model with random weights (only its spec matters here)."""
    from loafing.checkpoint import LoadedModel
    return LoadedModel(create_model(model, 10), {"model": model, "num_classes": 10, "method": "external"}, "test")





@pytest.mark.parametrize("model", list(CHECKPOINTS))
def test_uniform_subnetworks_on_jpeg_images_match_an_independent_implementation(model, small_cifar):
    """Every uniform sub-network (ResNet-8, -14, -20 inside ResNet-20; up to -32 inside ResNet-32), recalibrated."""
    loaded = load_model(CHECKPOINTS[model], model)
    sd = {k.removeprefix("module."): v for k, v in read_checkpoint(CHECKPOINTS[model])["state_dict"].items()}
    data = evaluation_data(loaded, "imagefolder", str(small_cifar))
    plans = uniform_space(loaded.model.layout)
    df = measure_plans(loaded, plans, data, EvalConfig(calib_size=200, calib_seed=3, batch_size=100, device="cpu"),
                       progress=False)
    x_test = torch.stack([x for x, _ in data.test])
    y_test = torch.tensor([int(y) for _, y in data.test])
    calib = [x for x, _ in make_loader(calibration_images(data, 200, 3), 100)]
    for depth, top1 in zip(range(1, len(plans) + 1), df["top1"]):
        collected: dict = {}
        with torch.no_grad():
            for xb in calib:
                functional_resnet_cifar(sd, xb, depth, collected, calibrate=True)
            stats = {k: (torch.stack([m for m, _ in v]).mean(0), torch.stack([s for _, s in v]).mean(0))
                     for k, v in collected.items()}
            expected = 100.0 * (functional_resnet_cifar(sd, x_test, depth, stats).argmax(1) == y_test).float().mean()
        assert abs(top1 - expected.item()) <= 0.5, (depth, top1, expected.item())
    assert df["top1"].iloc[-1] >= 75  # the whole network: the comparison is of a working model


def real_folder(cifar_jpeg: Path, root: Path, per_class: dict[str, int]) -> Path:
    """An image folder linking the first `per_class[split]` real JPEGs of each class."""
    for split, count in per_class.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for path in sorted((cifar_jpeg / split / name).iterdir())[:count]:
                os.symlink(path, root / split / name / path.name)
    return root


def measure_main(run_cli, data_dir: Path, out: Path) -> float:
    """ResNet-20's top-1 on `data_dir`'s test images, as `loafing measure` reports it."""
    code, _, err = run_cli("measure", "--ckpt", CHECKPOINTS["resnet20-cifar"], "--model", "resnet20-cifar",
                           "--dataset", "imagefolder", "--data-dir", data_dir, "--plan", "[1,2,3] [4,5,6] [7,8,9]",
                           "--no-recalibrate", "--device", "cpu", "--out", out, "--quiet")
    assert code == 0, err
    return pd.read_csv(out)["top1"].item()


def test_a_small_first_image_does_not_shrink_the_others(run_cli, cifar_jpeg, tmp_path):
    """The first file of a folder of real 32x32 JPEGs replaced by a 16x16 copy: every image is framed alone by the
    recipe (as decoding it alone would), on the CPU and in the device-resident split."""
    from PIL import Image

    from loafing.data import decode_image, load_dataset
    from loafing.device_data import resident_split
    from loafing.recipes import RECIPES

    root = real_folder(cifar_jpeg, tmp_path / "data", {"test": 50, "train": 5})
    for split in ("test", "train"):
        first = sorted((root / split / CLASSES[0]).iterdir())[0]
        small = Image.open(first).resize((16, 16))
        first.unlink()
        small.save(first)
    assert measure_main(run_cli, root, tmp_path / "m.csv") >= 75  # 10.67 when the first image set every image's size
    data = load_dataset("imagefolder", str(root), recipe="cifar")
    frame = RECIPES["cifar"].transforms(32)[1]
    assert tuple(decode_image(data.test.source.files[0]).shape) == (3, 16, 16)
    for i, path in enumerate(data.test.source.files):
        assert torch.equal(data.test[i][0], frame(decode_image(path)))
    split = resident_split(data.train, "cifar", 32)
    for i in range(len(data.train)):
        assert torch.equal(split.images[i], (data.train_plain[i][0] * 255).round().to(torch.uint8))


def test_sixteen_bit_pngs_measure_as_their_8_bit_originals(run_cli, cifar_jpeg, tmp_path):
    """Real test images in grey as 8-bit PNGs and as 16-bit ones (value x 257): the same numbers, not white images."""
    import numpy as np
    from PIL import Image

    for split, count in (("test", 10), ("train", 1)):
        for name in CLASSES:
            for bits in (8, 16):
                (tmp_path / f"grey{bits}" / split / name).mkdir(parents=True)
            for path in sorted((cifar_jpeg / split / name).iterdir())[:count]:
                grey = np.asarray(Image.open(path).convert("L"))
                Image.fromarray(grey).save(tmp_path / "grey8" / split / name / f"{path.stem}.png")
                wide = Image.fromarray(grey.astype(np.uint16) * 257)
                wide.save(tmp_path / "grey16" / split / name / f"{path.stem}.png")
    assert Image.open(next((tmp_path / "grey16" / "test" / "cat").iterdir())).mode == "I;16"
    eight = measure_main(run_cli, tmp_path / "grey8", tmp_path / "grey8.csv")
    assert measure_main(run_cli, tmp_path / "grey16", tmp_path / "grey16.csv") == eight and eight >= 50


class RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(run_cli, tmp_path, small_cifar):
    marker = tmp_path / "it-ran"
    state = torch.load(CHECKPOINTS["resnet20-cifar"], map_location="cpu", weights_only=True)
    torch.save({**state, "payload": RunsCode(marker)}, tmp_path / "hostile.th")
    out = tmp_path / "out.csv"
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "hostile.th", "--model", "resnet20-cifar", "--dataset",
                           "imagefolder", "--data-dir", small_cifar, "--out", out, "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "posix.system" in err and "--unsafe-load" in err and "nothing in it was run" in err
    assert not marker.exists() and not out.exists()


def test_unsafe_load_opens_a_trusted_file_with_other_objects(run_cli, tmp_path, small_cifar):
    state = torch.load(CHECKPOINTS["resnet20-cifar"], map_location="cpu", weights_only=True)
    torch.save({**state, "args": argparse.Namespace(arch="resnet20")}, tmp_path / "with-args.th")
    common = ["--model", "resnet20-cifar", "--dataset", "imagefolder", "--data-dir", small_cifar, "--no-recalibrate",
              "--plan", "[1,2,3] [4,5,6] [7,8,9]", "--quiet"]
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "with-args.th", *common, "--out", tmp_path / "a.csv")
    assert code == 2 and "argparse.Namespace" in err
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "with-args.th", *common, "--unsafe-load",
                           "--out", tmp_path / "a.csv")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "a.csv")["top1"].item() >= 75


def test_inside_vs_alone_on_the_papers_checkpoints(run_cli, tmp_path, small_cifar):
    """Fig. 1 on real images: ResNet-20 inside ResNet-32 is far worse than ResNet-20 on its own."""
    code, out, err = run_cli("inside-vs-alone", "--ckpt", f"resnet20-cifar={CHECKPOINTS['resnet20-cifar']}",
                             "--ckpt", f"resnet32-cifar={CHECKPOINTS['resnet32-cifar']}", "--dataset", "imagefolder",
                             "--data-dir", small_cifar, "--calib-size", 200, "--out", tmp_path, "--quiet")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "measure.csv")
    assert sorted(zip(table["model"], table["depths"], table["is_main"])) == [
        ("resnet20-cifar", "3-3-3", True), ("resnet32-cifar", "3-3-3", False), ("resnet32-cifar", "5-5-5", True)]
    top1 = table.set_index(["model", "depths"])["top1"]
    assert top1["resnet20-cifar", "3-3-3"] >= 75 and top1["resnet32-cifar", "5-5-5"] >= 75
    assert top1["resnet32-cifar", "3-3-3"] < top1["resnet20-cifar", "3-3-3"] - 10  # loafing
    assert (tmp_path / "fig1.png").stat().st_size > 0 and "| ResNet20 |" in (tmp_path / "inside.md").read_text()
    [gap] = pd.read_csv(tmp_path / "loafing_gap.csv").to_dict("records")  # ResNet-20 inside ResNet-32 vs alone
    assert (gap["model"], gap["depths"], gap["n_examples"]) == ("resnet32-cifar", "3-3-3", 500)
    assert gap["gap"] == pytest.approx(top1["resnet32-cifar", "3-3-3"] - top1["resnet20-cifar", "3-3-3"])
    assert gap["gap_ci_low"] < gap["gap"] < gap["gap_ci_high"] < 0  # paired over 500 images, loafing is certain
    assert "inside − alone" in (tmp_path / "gap.md").read_text() and "gap.md" in out
    # Every other figure of these foreign checkpoints' results is drawn or skipped with a reason, never an error.
    code, out, err = run_cli("figures", "--results", tmp_path, "--out", tmp_path / "all")
    assert code == 0, err
    # Table 1 is a spread over a sampling space: two architectures of the inside grid are none
    assert not list((tmp_path / "all").glob("table1*"))
    assert "table1" in out.splitlines()[-1] and "no run of the whole network with its sub-networks measured as a space" in out.splitlines()[-1]
    assert "fig4 needs a CT run and at least one ST run" in out.splitlines()[-1]  # the summary line


def test_the_device_resident_split_of_real_jpegs_is_their_pixels_cropped_and_flipped_as_the_recipe_does(small_cifar):
    from loafing.data import decode_image, load_dataset
    from loafing.device_data import DeviceBatches, resident_split

    data = load_dataset("imagefolder", str(small_cifar), recipe="cifar")
    split = resident_split(data.train, "cifar", 32)
    files = data.train.source.files
    assert split.augment and split.images.shape == (200, 3, 32, 32) and split.images.dtype == torch.uint8
    for i in (0, 57, 199):
        assert torch.equal(split.images[i], decode_image(files[i]))
        assert split.labels[i] == CLASSES.index(Path(files[i]).parent.name)
    batches = DeviceBatches(split, 50, torch.device("cpu"), seed=0)
    flips = 0
    for images, labels in batches:
        assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
        for image, label in zip(images[:10], labels[:10]):
            pixels = (image * 255).round().to(torch.uint8)
            # which training image, cropped where and flipped or not, is it? exactly one of the recipe's crops
            found = [(i, top, left, flip) for i in torch.nonzero(split.labels == label).flatten().tolist()
                     for top in range(9) for left in range(9) for flip in (False, True)
                     if torch.equal(pixels, _crop(split.images[i], top, left, flip))]
            assert len(found) == 1
            flips += found[0][3]
    assert 0 < flips < 40


def _crop(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """`image` zero-padded by 4, cropped back to 32x32 at (top, left), mirrored if `flip`."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))[:, top:top + 32, left:left + 32]
    return padded.flip(-1) if flip else padded


# A library network, its deletion plan and the same block as timm's network holds it (net -> its blocks' container).
LIBRARY_DELETIONS = {
    "convnext": ("timm:convnext_atto", {"patch_size": 2}, "[1,2] [3,4] [5,7,8,9,10] [11,12]",
                 lambda net: (net.stages[2].blocks, 1)),
    "vit": ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4,
                                          "num_heads": 2}, "[1,2,4]", lambda net: (net.blocks, 2)),
}


@pytest.mark.parametrize("family", sorted(LIBRARY_DELETIONS))
def test_a_library_networks_deletion_plan_on_jpegs_is_the_network_with_that_block_an_identity(
        family, run_cli, small_cifar, tmp_path):
    import timm
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    name, args, plan, container = LIBRARY_DELETIONS[family]
    model_args = [a for k, v in args.items() for a in ("--model-arg", f"{k}={v}")]
    code, _, err = run_cli("train", "--model", name, *model_args, "--dataset", "imagefolder", "--data-dir",
                           small_cifar, "--epochs", "1", "--lr", "0.01", "--image-size", "32", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "run" / "checkpoint.pt", "--plan", plan,
                           "--out", tmp_path / "m.csv")
    assert code == 0, err
    measured = pd.read_csv(tmp_path / "m.csv")
    assert measured["plan"].tolist() == [plan] and not measured["recalibrated"].any()  # LayerNorm: nothing to do
    assert measured["n_examples"].item() == 500

    # The same weights in timm's own network, the block replaced by nn.Identity, on the JPEGs decoded by PIL.
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    net = timm.create_model(name.partition(":")[2], num_classes=10, **args)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state["model"].items()})
    blocks, index = container(net)
    blocks[index] = torch.nn.Identity()
    net.eval()
    mean = torch.tensor(state["normalization"]["mean"]).view(3, 1, 1)
    std = torch.tensor(state["normalization"]["std"]).view(3, 1, 1)
    correct = total = 0
    with torch.no_grad():
        for label, klass in enumerate(CLASSES):
            files = sorted((small_cifar / "test" / klass).iterdir())
            images = torch.stack([(pil_to_tensor(Image.open(f).convert("RGB")) / 255 - mean) / std for f in files])
            correct += (net(images).argmax(1) == label).sum().item()
            total += len(files)
    assert measured["top1"].item() == pytest.approx(100 * correct / total, abs=1e-9)


def test_recalibrating_on_augmented_training_images_keeps_what_the_running_statistics_give(cifar_jpeg, tmp_path):
    """The paper's recalibration draws its images as training does. On the main network of a trained ResNet it must
    give at least the accuracy of the statistics training gathered; calibrating on images as evaluated (the mistake
    this toolkit made until 2026-12-03) costs akamaster's ResNet-20 several points."""
    folder = real_folder(cifar_jpeg, tmp_path, {"test": 100, "train": 200})
    loaded = load_model(CHECKPOINTS["resnet20-cifar"], "resnet20-cifar")
    data = evaluation_data(loaded, "imagefolder", str(folder))
    main = [loaded.model.layout.main_plan]

    def top1(**settings) -> float:
        evaluation = EvalConfig(calib_size=2000, batch_size=250, device="cpu", **settings)
        return measure_plans(loaded, main, data, evaluation, progress=False)["top1"].item()

    running, augmented, as_evaluated = top1(recalibrate=False), top1(), top1(calib_augment=False)
    assert augmented >= running - 0.5, (augmented, running)
    assert as_evaluated <= augmented - 1.5, (as_evaluated, augmented)
