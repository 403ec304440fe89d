"""Published checkpoints named on the command line (`--ckpt akamaster:resnet56`), fetched once into torch's hub cache
(`torch.hub.get_dir()/checkpoints`) and checked, on every use, against the sha256 prefix their file name carries; and
where a library's named weights are cached, so that a first use without a network fails at once instead of retrying.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.parse
from pathlib import Path

from loafing.errors import LoafingError

AKAMASTER = "akamaster"
# The pretrained CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 (the paper's Fig. 1), by network; each
# file name ends with the first hex digits of its sha256, as torch.hub names files.
AKAMASTER_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
    "resnet110": "resnet110-1d1ed7c2.th",
    "resnet1202": "resnet1202-f3b1deed.th",
}
AKAMASTER_URL = "https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/master/pretrained_models/{}"
HASH_RE = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's rule for the hash prefix in a file name


def is_hub_name(text: str) -> bool:
    """Whether a --ckpt value names a published checkpoint (`akamaster:<name>`) rather than a file."""
    return str(text).startswith(f"{AKAMASTER}:")


def akamaster_model(name: str) -> str:
    """The registered model of akamaster's network `name` ("resnet56" -> "resnet56-cifar")."""
    return f"{name}-cifar"


def _check_name(text: str) -> str:
    """The network of an `akamaster:<name>` text, refused in one line unless loafing can load it."""
    from loafing.models import MODELS

    name = text.partition(":")[2]
    loadable = [n for n in AKAMASTER_FILES if akamaster_model(n) in MODELS]
    if name not in loadable:
        choices = ", ".join(f"{AKAMASTER}:{n}" for n in loadable)
        if name in AKAMASTER_FILES:
            raise LoafingError(f"{text} cannot be loaded: loafing registers no {akamaster_model(name)} model; valid "
                               f"choices: {choices}")
        raise LoafingError(f"unknown checkpoint {text!r}; valid choices: {choices}")
    return name


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_checkpoint(text: str) -> tuple[Path, str]:
    """The cached file of a published checkpoint (downloaded first if absent) and its registered model; the file is
    checked against the sha256 prefix in its name every time, and a corrupted copy is refused."""
    import torch.hub

    name = _check_name(text)
    file = AKAMASTER_FILES[name]
    prefix = HASH_RE.search(file).group(1)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file
    if not path.exists():
        url = AKAMASTER_URL.format(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=False)
        except OSError as err:  # urllib's URLError and HTTPError among them
            reason = getattr(err, "reason", None) or err.strerror or type(err).__name__
            raise LoafingError(f"cannot download {text} from {url}: {reason}; check the network, or put {file} in "
                               f"{str(path.parent)!r} yourself") from None
        except RuntimeError as err:  # torch.hub's hash check: the partial file is removed
            raise LoafingError(f"the download of {text} from {url} is not the published file ({err})") from None
    if not sha256_of(path).startswith(prefix):
        raise LoafingError(f"cached checkpoint {str(path)!r} is corrupted (its sha256 does not start with {prefix}, "
                           "as its name says): delete it, and it is downloaded again")
    return path, akamaster_model(name)


def _torch_hub_file(url: str) -> Path:
    """Where torch.hub (and timm's URL downloads, and torchvision's) caches the file of `url`."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)


def _timm_cache(name: str) -> tuple[bool, str, str]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg.hf_hub_id:  # timm's first choice, as huggingface_hub is installed with it
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files)
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return cached, f"copy the Hugging Face hub's cache folder {str(folder)!r} from a machine that has it", \
            constants.ENDPOINT
    if cfg.url:
        file = _torch_hub_file(cfg.url)
        return file.exists(), f"put {file.name} ({cfg.url}) in {str(file.parent)!r}", cfg.url
    return True, "", ""  # a file its configuration names: nothing to download


def _torchvision_cache(name: str, weights: str) -> tuple[bool, str, str]:
    import torchvision

    url = torchvision.models.get_model_weights(name)[weights.rpartition(".")[2]].url
    file = _torch_hub_file(url)
    return file.exists(), f"put {file.name} ({url}) in {str(file.parent)!r}", url


def unreachable(url: str, timeout: float = 5.0) -> str:
    """Why the host of `url`, or the proxy the environment puts before it, cannot be connected to now ("" if it can)."""
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    return ""


def check_weights_reachable(model: str, weights: str) -> None:
    """Raise a one-line LoafingError at once when `model`'s named `weights` (the library's full name of them) are
    neither in the library's local cache nor downloadable now: the libraries' own downloaders retry for a minute
    before they fail. The message says where to put the weights."""
    library, _, name = model.partition(":")
    cached, where, url = _timm_cache(weights) if library == "timm" else _torchvision_cache(name, weights)
    reason = "" if cached else unreachable(url)
    if reason:
        raise LoafingError(f"{model}'s weights {weights} are not in the local cache and "
                           f"{urllib.parse.urlsplit(url).hostname} cannot be reached ({reason}): {where}, or give "
                           "--weights a state-dict file")
