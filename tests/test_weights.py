"""A library network's own weights (`--weights`) and published checkpoints (`--ckpt akamaster:<name>`), offline.

Nothing here reaches the network: every downloader (torch.hub's, timm's, torchvision's) is replaced by one that fails
the test, timm's pretrained weights come from a local file through its own `pretrained_cfg_overlay=dict(file=...)`,
torchvision's from a patched `load_state_dict_from_url`, and torch's hub cache is a temporary folder.
"""
from __future__ import annotations

import email.message
import io
import json
import math
import re
import shutil
import urllib.error
import urllib.response
from pathlib import Path

import pandas as pd
import pytest
import timm
import timm.data
import torch
import torchvision

from loafing.checkpoint import load_model, read_checkpoint
from loafing.errors import LoafingError
from loafing.hub import AKAMASTER_FILES, AKAMASTER_URL
from loafing.models import create_model
from loafing.weights import load_library_weights, start_from_weights, weights_framing

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "checkpoints"
RESNET20 = SHARED / "resnet20-12fca82f.th"
needs_shared = pytest.mark.skipif(not RESNET20.exists(), reason="../shared/checkpoints (the project's reference "
                                  "material, with akamaster's resnet20 file) is not on this machine")


def _refuse(*args, **kwargs):
    raise AssertionError(f"a test tried to download {args[:1]}")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """torch's hub cache in a temporary folder, and every downloader failing the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub.urlopen", _refuse)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", _refuse)
    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(f"timm.models._builder.{name}", _refuse)
    monkeypatch.setattr("loafing.hub.unreachable", lambda url: "")  # as if online: the downloaders above answer


@pytest.fixture
def timm_file(monkeypatch, tmp_path):
    """Make timm's pretrained weights of any network come from one local file (through timm's own loading code);
    returns a function writing a network's state dict as that file."""
    path = tmp_path / "timm-weights.pth"
    real = timm.create_model

    def from_file(name, pretrained=False, **kwargs):
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", from_file)

    def write(net: torch.nn.Module) -> Path:
        torch.save(net.state_dict(), path)
        return path
    return write


def _normalized(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_timm_pretrained_weights_are_its_own_with_their_normalization_and_framing(timm_file):
    torch.manual_seed(1)
    reference = timm.create_model("resnet10t").eval()  # pretrained=False: random weights, as the "download"
    timm_file(reference)
    loaded = load_library_weights("timm:resnet10t", {}, "pretrained")
    assert loaded.config["num_classes"] == 1000 and loaded.config["run"] == "resnet10t.c3_in1k"
    assert loaded.source == "timm" and loaded.config["weights"] == "c3_in1k"  # the tag "pretrained" resolved to
    expected = timm.data.resolve_model_data_config(reference)  # timm's own account of the input
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(_normalized(x, expected["mean"], expected["std"])),
                                   rtol=1e-5, atol=1e-5)
    resize, crop = timm.data.create_transform(**expected).transforms[:2]  # timm's evaluation framing
    interpolation = resize.interpolation.value  # bicubic
    assert weights_framing("timm:resnet10t", {}, "pretrained", "cifar10", None, None) == (crop.size[0], resize.size,
                                                                                          interpolation)
    assert weights_framing("timm:resnet10t", {}, "c3_in1k", "cifar10", 128, None) == \
        (128, round(128 * resize.size / 176), interpolation)
    assert weights_framing("timm:resnet10t", {}, "pretrained", "cifar10", 32, None) == (32, None, "bilinear")  # cifar
    assert weights_framing("timm:resnet10t", {}, "pretrained", "digits", None, None) == (None, None, "bilinear")


def test_timm_weights_fit_a_network_built_with_arguments_as_timm_fits_them(timm_file):
    torch.manual_seed(2)
    timm_file(timm.create_model("test_vit"))  # at its own 160x160 inputs
    args = {"img_size": 32, "dynamic_img_size": False}  # a network that insists on 32x32 inputs
    loaded = load_library_weights("timm:test_vit", args, "pretrained")
    reference = timm.create_model("test_vit", pretrained=True, **args).eval()  # timm resamples its position embedding
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(_normalized(x, (0.5,) * 3, (0.5,) * 3)))
    # built for small inputs: the recipe frames them, not the weights' 160 crop
    assert weights_framing("timm:test_vit", args, "pretrained", "cifar10", None, None) == (None, None, "bilinear")


@pytest.fixture
def torchvision_weights(monkeypatch):
    """torchvision's download of any weights answered with one network's state dict; returns (network, calls)."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    calls = []

    def answer(url, *args, **kwargs):
        calls.append((url, kwargs.get("check_hash")))
        return {k: v.clone() for k, v in reference.state_dict().items()}
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", answer)
    return reference, calls


@pytest.mark.parametrize("weights", ["pretrained", "IMAGENET1K_V1"])
def test_torchvision_weights_by_name(weights, torchvision_weights):
    reference, calls = torchvision_weights
    loaded = load_library_weights("torchvision:resnet18", {}, weights)
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert calls == [(enum.url, True)]  # torchvision's own download, hash-checked
    assert loaded.config["run"] == "ResNet18_Weights.IMAGENET1K_V1" and loaded.config["num_classes"] == 1000
    assert loaded.config["weights"] == torchvision.models.ResNet18_Weights.DEFAULT.name == "IMAGENET1K_V1"
    framing = enum.transforms()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(_normalized(x, framing.mean, framing.std)),
                                   rtol=1e-5, atol=1e-5)
    assert weights_framing("torchvision:resnet18", {}, weights, "imagefolder", None, None) == (
        framing.crop_size[0], framing.resize_size[0], "bilinear")


def test_named_weights_are_evaluated_through_their_own_framing_and_interpolation(tmp_path):
    from PIL import Image

    from loafing.config import TrainConfig
    from loafing.training_run import training_data

    torch.manual_seed(4)
    # A photo-like image (coarse random pixels, smoothly enlarged): on pure noise, torchvision's two uint8 bicubic
    # resizes (its weights' transforms and transforms.v2) differ by up to 20 levels where they clip overshoots.
    coarse = torch.randint(0, 256, (1, 3, 30, 26)).float()
    pixels = torch.nn.functional.interpolate(coarse, size=(300, 260), mode="bilinear").round().to(torch.uint8)[0]
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / split / "a" / "0.png")
    enum = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1  # framed with a bicubic resize
    framing = enum.transforms()
    raw = torchvision.io.decode_image(str(tmp_path / "test" / "a" / "0.png"))
    mean, std = torch.tensor(framing.mean).view(3, 1, 1), torch.tensor(framing.std).view(3, 1, 1)
    expected = framing(raw) * std + mean  # torchvision's own evaluation input, before its normalization
    data = training_data(TrainConfig(model="torchvision:efficientnet_b0", weights="IMAGENET1K_V1",
                                     dataset="imagefolder", data_dir=str(tmp_path)))
    got = data.test[0][0]
    assert got.shape == expected.shape == (3, 224, 224)
    torch.testing.assert_close(got, expected, atol=1.01 / 255, rtol=0)  # one uint8 step: both round once
    bilinear = torchvision.transforms.v2.functional.resize(raw, framing.resize_size, antialias=True)
    bilinear = torchvision.transforms.v2.functional.center_crop(bilinear, framing.crop_size).float() / 255
    assert (bilinear - expected).abs().max() > 3 / 255  # the check can tell the two interpolations apart


@pytest.mark.parametrize("name", ["timm:resnet10t", "torchvision:resnet18"])
def test_training_starts_from_the_weights_with_a_fresh_classifier_for_other_classes(name, timm_file,
                                                                                    torchvision_weights):
    torch.manual_seed(4)
    pretrained = timm.create_model("resnet10t").eval() if name.startswith("timm") else torchvision_weights[0]
    if name.startswith("timm"):
        timm_file(pretrained)
    model = create_model(name, 10)
    head = model.net.fc.weight.clone()
    start_from_weights(model, name, {}, "pretrained")
    assert torch.equal(model.net.fc.weight, head) and model.net.fc.weight.shape == (10, 512)
    ours, theirs = model.net.state_dict(), pretrained.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("fc."))
    model = create_model(name, 1000)  # the weights' own classes: their classifier too
    start_from_weights(model, name, {}, "pretrained")
    assert torch.equal(model.net.fc.weight, pretrained.fc.weight)


def test_weights_without_a_classifier_start_the_models_own(tmp_path):
    torch.manual_seed(5)
    headless = timm.create_model("resnet10t", num_classes=0)  # as DINO's or MAE's weights come
    torch.save(headless.state_dict(), tmp_path / "headless.pt")
    model = create_model("timm:resnet10t", 10)
    head = model.net.fc.weight.clone()
    start_from_weights(model, "timm:resnet10t", {}, str(tmp_path / "headless.pt"))
    assert torch.equal(model.net.fc.weight, head)
    ours = model.net.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in headless.state_dict().items())


def test_train_from_pretrained_weights_records_them_and_keeps_their_normalization(timm_file, tmp_path, run_cli):
    torch.manual_seed(5)
    pretrained = timm.create_model("resnet10t")
    timm_file(pretrained)
    out = tmp_path / "run"
    settings = {"model": "timm:resnet10t", "weights": "pretrained", "epochs": 1, "train_size": 16, "batch_size": 8,
                "monitor_calib_size": 8, "lr": 1e-12, "weight_decay": 0.0, "momentum": 0.0, "device": "cpu"}
    code, _, err = run_cli("train", *[a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", v)],
                           "--out", out, "--quiet")
    assert code == 0, err
    # Recorded as the tag timm resolves "pretrained" to today, so that a later default changes nothing.
    tag = timm.models.get_pretrained_cfg("resnet10t").tag
    recorded = json.loads((out / "config.json").read_text())
    assert tag and recorded["weights"] == tag
    # A study naming "pretrained" finds its run done, also one recorded before tags were resolved.
    from loafing.config import make_train_config
    from loafing.reproduce import has_config

    assert has_config(out, make_train_config({**settings, "out": str(out)}))
    (out / "config.json").write_text(json.dumps({**recorded, "weights": "pretrained"}))
    assert has_config(out, make_train_config({**settings, "out": str(out)}))
    assert not has_config(out, make_train_config({**settings, "weights": "a1_in1k", "out": str(out)}))
    loaded = load_model(out / "checkpoint.pt")
    expected = timm.data.resolve_model_data_config(pretrained)  # the weights' normalization, not the digits'
    for key in ("mean", "std"):
        assert loaded.model.normalization[key] == pytest.approx(expected[key])
    trained = dict(loaded.model.net.named_parameters())
    for key, value in pretrained.named_parameters():  # a learning rate of 1e-12 leaves the start as it was
        if not key.startswith("fc."):
            torch.testing.assert_close(trained[key], value.detach())
    assert trained["fc.weight"].shape == (10, 512)


def test_resuming_a_run_from_weights_does_not_fetch_them_again(timm_file, tmp_path, interrupted_training,
                                                                monkeypatch, run_cli):
    from loafing.config import make_train_config

    timm_file(timm.create_model("resnet10t"))
    out = tmp_path / "run"
    config = make_train_config({"model": "timm:resnet10t", "weights": "pretrained", "epochs": 2, "train_size": 16,
                                "batch_size": 8, "monitor_calib_size": 8, "device": "cpu", "out": str(out)})
    interrupted_training(config, 2)
    building = timm.create_model

    def without_weights(name, pretrained=False, **kwargs):  # the start's weights are the checkpoint's now
        return _refuse(name) if pretrained else building(name, **kwargs)
    monkeypatch.setattr(timm, "create_model", without_weights)
    code, _, err = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, err
    assert load_model(out / "checkpoint.pt").model.normalization["std"] == pytest.approx([0.229, 0.224, 0.225])


@pytest.fixture
def convnext_file(tmp_path):
    """A small timm ConvNeXt's state dict (10 classes) as a file, with the builder arguments that make it."""
    args = {"dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1]}
    torch.manual_seed(6)
    net = timm.create_model("convnext_atto", num_classes=10, **args).eval()
    torch.save(net.state_dict(), tmp_path / "convnext.pth")
    return tmp_path / "convnext.pth", args, net


def test_measure_a_weights_file_of_a_network_built_with_arguments(convnext_file, tmp_path, run_cli):
    path, args, net = convnext_file
    loaded = load_library_weights("timm:convnext_atto", args, str(path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(_normalized(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))))
    flags = [f for k, v in args.items() for f in ("--model-arg", f"{k}={','.join(map(str, v))}")]
    code, out, err = run_cli("measure", "--model", "timm:convnext_atto", *flags, "--weights", path, "--space",
                             "uniform", "--dataset", "digits", "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0, err
    df = pd.read_csv(tmp_path / "m.csv")
    assert len(df) == 2 and set(df["run"]) == {"convnext"} and "main top-1" in out
    code, _, err = run_cli("measure", "--model", "timm:convnext_atto", "--weights", path, "--out", tmp_path / "n.csv")
    assert code == 2 and "does not fit the model" in err  # without the arguments, not the network of the file


def test_a_safetensors_file_is_read_as_timm_reads_it(convnext_file, tmp_path, run_cli):
    from safetensors.torch import save_file

    _, args, net = convnext_file
    path = tmp_path / "model.safetensors"  # the format the Hugging Face hub keeps timm's weights in
    save_file(net.state_dict(), path)
    by_timm = timm.create_model("convnext_atto", num_classes=10, **args).eval()
    timm.models.load_checkpoint(by_timm, str(path))  # timm's own reader of the file
    loaded = load_library_weights("timm:convnext_atto", args, str(path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = by_timm(_normalized(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        torch.testing.assert_close(loaded.model(x), expected)
        torch.testing.assert_close(expected, net(_normalized(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))))
    flags = [f for k, v in args.items() for f in ("--model-arg", f"{k}={','.join(map(str, v))}")]
    code, _, err = run_cli("measure", "--model", "timm:convnext_atto", *flags, "--weights", path, "--space", "uniform",
                           "--dataset", "digits", "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0, err
    with pytest.raises(LoafingError, match="is a safetensors file of weights, not a run to resume"):
        read_checkpoint(path, resume=True)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])  # an interrupted download
    code, _, err = run_cli("measure", "--model", "timm:convnext_atto", *flags, "--weights", cut, "--out",
                           tmp_path / "n.csv")
    assert code == 2 and "is an unreadable safetensors file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.csv").exists()


@pytest.mark.parametrize("args, problem", [
    (["--ckpt", "x.pt", "--weights", "pretrained", "--model", "timm:resnet10t"], "not both"),
    (["--model", "timm:resnet10t"], "give --ckpt .* or --weights .*one of them"),
    (["--weights", "pretrained"], "--weights needs --model timm:<name> or torchvision:<name>"),
    (["--weights", "pretrained", "--model", "resnet20-cifar"], "not 'resnet20-cifar'"),
    (["--weights", "imagenet", "--model", "timm:resnet10t"],
     "'imagenet' is neither a file nor weights timm has for resnet10t; valid choices: pretrained, c3_in1k, or a"),
    (["--weights", "IMAGENET1K_V2", "--model", "torchvision:resnet18"], "valid choices: pretrained, IMAGENET1K_V1,"),
    (["--weights", "pretrained", "--model", "timm:resnet10t"], "classify 1000 classes but digits has 10: .*loafing "
     "train --weights"),
])
def test_bad_weights_are_one_line_errors(args, problem, timm_file, tmp_path, run_cli):
    torch.manual_seed(7)
    timm_file(timm.create_model("resnet10t"))
    code, _, err = run_cli("measure", *args, "--out", tmp_path / "m.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(problem, err), err


def test_train_refuses_weights_for_a_registered_model(tmp_path, run_cli):
    code, _, err = run_cli("train", "--model", "resnet20-cifar", "--weights", "pretrained", "--out", tmp_path / "r")
    assert code == 2 and "--weights starts a timm:<name> or torchvision:<name> network" in err
    assert not (tmp_path / "r").exists()


# --- akamaster:<name> ---

def _cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _serve(monkeypatch, body: bytes) -> list[str]:
    """torch.hub's own download code answered with `body` for any URL; returns the URLs asked for."""
    asked = []

    def urlopen(request):
        asked.append(request.full_url)
        return urllib.response.addinfourl(io.BytesIO(body), email.message.Message(), request.full_url, 200)
    monkeypatch.setattr("torch.hub.urlopen", urlopen)
    return asked


@needs_shared
def test_akamaster_checkpoint_in_the_cache_is_the_file_and_is_not_downloaded_again(tmp_path):
    _cache().mkdir(parents=True)
    shutil.copy(RESNET20, _cache() / RESNET20.name)
    loaded = load_model("akamaster:resnet20")  # the offline fixture fails any download
    direct = load_model(RESNET20, "resnet20-cifar")
    assert loaded.source == "akamaster" and loaded.config["model"] == "resnet20-cifar"
    assert loaded.config["run"] == direct.config["run"] == "resnet20-12fca82f"
    ours, theirs = loaded.model.state_dict(), direct.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@needs_shared
def test_akamaster_checkpoint_is_downloaded_once_with_its_hash_checked(monkeypatch, tmp_path):
    asked = _serve(monkeypatch, RESNET20.read_bytes())
    load_model("akamaster:resnet20")
    load_model("akamaster:resnet20")
    assert asked == [AKAMASTER_URL.format(AKAMASTER_FILES["resnet20"])]
    assert asked[0] == ("https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/master/pretrained_models/"
                        "resnet20-12fca82f.th")
    assert (_cache() / RESNET20.name).read_bytes() == RESNET20.read_bytes()


def test_a_download_that_is_not_the_published_file_is_refused_and_not_kept(monkeypatch):
    _serve(monkeypatch, b"not the checkpoint")
    with pytest.raises(LoafingError, match=r"download of akamaster:resnet56 from https://\S+resnet56-4bfd9763.th is "
                       "not the published file .*invalid hash value"):
        load_model("akamaster:resnet56")
    assert not _cache().exists() or not list(_cache().iterdir())


def test_a_failed_download_says_where_to_put_the_file(monkeypatch):
    def down(request):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr("torch.hub.urlopen", down)
    with pytest.raises(LoafingError, match="cannot download akamaster:resnet32 from .*: no route to host; check the "
                       "network, or put resnet32-d509ac18.th in '.*checkpoints' yourself"):
        load_model("akamaster:resnet32")


@needs_shared
def test_a_corrupted_cached_copy_is_refused_naming_the_file(tmp_path):
    _cache().mkdir(parents=True)
    corrupted = bytearray(RESNET20.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    (_cache() / RESNET20.name).write_bytes(bytes(corrupted))
    with pytest.raises(LoafingError, match=f"cached checkpoint '{_cache() / RESNET20.name}' is corrupted .*: delete "
                       "it") as err:
        load_model("akamaster:resnet20")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, problem", [
    ("akamaster:resnet57", "unknown checkpoint 'akamaster:resnet57'; valid choices: akamaster:resnet20, "
     "akamaster:resnet32, akamaster:resnet44, akamaster:resnet56, akamaster:resnet110"),
    ("akamaster:resnet1202", "akamaster:resnet1202 cannot be loaded: loafing registers no resnet1202-cifar model"),
])
def test_unknown_akamaster_names_are_refused_with_the_choices(text, problem):
    with pytest.raises(LoafingError, match=problem):
        load_model(text)


@needs_shared
def test_measure_an_akamaster_checkpoint_by_name(tmp_path, run_cli):
    _cache().mkdir(parents=True)
    shutil.copy(RESNET20, _cache() / RESNET20.name)
    code, _, err = run_cli("measure", "--ckpt", "akamaster:resnet20", "--model", "resnet32-cifar", "--out",
                           tmp_path / "m.csv")
    assert code == 2 and "akamaster:resnet20 is a resnet20-cifar, not --model resnet32-cifar" in err
    code, out, err = run_cli("measure", "--ckpt", "akamaster:resnet20", "--space", "uniform", "--calib-size", "32",
                             "--dataset", "digits", "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0, err
    df = pd.read_csv(tmp_path / "m.csv")
    assert list(df["depths"]) == ["1-1-1", "2-2-2", "3-3-3"] and set(df["run"]) == {"resnet20-12fca82f"}
    assert set(df["method"]) == {"external"} and not math.isnan(df["top1"].iloc[0])


@needs_shared
def test_inside_vs_alone_takes_the_papers_checkpoints_by_name():
    from loafing.inside import inside_plans, load_family

    _cache().mkdir(parents=True)
    for file in (RESNET20, SHARED / "resnet32-d509ac18.th"):
        shutil.copy(file, _cache() / file.name)
    networks, data = load_family(["akamaster:resnet20", "akamaster:resnet32"], "digits")
    assert [n.config["run"] for n in networks] == ["resnet20-12fca82f", "resnet32-d509ac18"]
    assert [p.depths_str for p in inside_plans(networks[1], networks)] == ["5-5-5", "3-3-3"]
