"""Study files from a hostile user's side: a run's or a study's name that is no single folder name, a file that is
no study text (binary, endless, a FIFO, too big, not UTF-8), and every error naming its entry as a compiler would
(`runs[1].lam`, 0-based). Each is one line on stderr, exit 2, and nothing written anywhere."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A study that trains in seconds: one resnet20-cifar epoch on 32 digits, nothing measured.
TINY = """
    [defaults]
    model = "resnet20-cifar"
    dataset = "digits"
    epochs = 1
    train_size = 32
    batch_size = 16
    monitor_calib_size = 16
    kl_probe_size = 16
    [measure]
    runs = []
"""


def write(folder: Path, text: str, name: str = "study.toml") -> Path:
    """`text` (dedented) as the study file `folder/name`."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def every_file(folder: Path) -> set[Path]:
    """Every path under `folder`."""
    return set(folder.rglob("*"))


def refused(run_cli, *args) -> str:
    """The one error line of a `loafing` command that must be refused (exit 2, nothing on stdout)."""
    code, out, err = run_cli(*args)
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loafing: error: "), err
    return lines[0].removeprefix("loafing: error: ")


@pytest.mark.parametrize("name", ["../../other", "../results", "a/b", "", ".", "..", "ABSOLUTE", "st lam"])
def test_a_run_name_that_is_no_single_folder_name_is_refused_before_any_work(tmp_path, run_cli, monkeypatch, name):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    study = write(work, TINY + f'\n[[runs]]\nname = "ok"\n[[runs]]\nname = "{name}"\n')
    before = every_file(tmp_path)
    message = refused(run_cli, "reproduce", "--study", study, "--out", work / "out", "--quiet")
    assert message.startswith(f"{study}: runs[1].name: ") and repr(name) in message
    assert "letters, digits" in message
    assert every_file(tmp_path) == before


def test_a_run_name_filled_in_from_a_template_is_checked_too(tmp_path, run_cli):
    study = write(tmp_path, TINY + '\n[[runs]]\nname = "{dataset}/{seed}"\nseed = [0, 1]\n')
    message = refused(run_cli, "reproduce", "--study", study, "--out", tmp_path / "out", "--quiet")
    assert message.startswith(f"{study}: runs[0].name: ") and "'digits/0'" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../other", "ABSOLUTE", "..", "a/b"])
def test_a_study_name_that_is_no_single_folder_name_is_refused(tmp_path, run_cli, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    study = write(work, f'name = "{name}"\n' + TINY + '\n[[runs]]\nname = "ct"\n')
    before = every_file(tmp_path)
    message = refused(run_cli, "reproduce", "--study", study, "--quiet")  # the default folder: reproduce/NAME
    assert message.startswith(f"{study}: name: ") and repr(name) in message
    assert every_file(tmp_path) == before


def test_a_file_named_dotdot_toml_is_no_default_study_folder(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path, TINY + '\n[[runs]]\nname = "ct"\n', name="...toml")  # its stem is ".."
    message = refused(run_cli, "reproduce", "--study", study, "--dry-run")
    assert message.startswith(f"{study}: name: ") and "'..'" in message


def binary(tmp_path: Path, kind: str) -> Path:
    """A file that is no study text: random bytes, a real PNG of ours, Latin-1 text, a FIFO, a device, a big file."""
    path = tmp_path / f"{kind}.toml"
    if kind == "random":
        path.write_bytes(bytes([0xA9, 0xFF, 0x00, 0x80]) + os.urandom(4000))
    elif kind == "png":
        path.write_bytes((ROOT / "figures" / "quick" / "fig4.png").read_bytes())
    elif kind == "latin1":
        path.write_bytes('description = "café"\n'.encode("latin-1"))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        return Path("/dev/zero")
    elif kind == "big":  # valid TOML, 2 MiB of comments
        path.write_text('name = "big"\n' + ("# " + "x" * 1000 + "\n") * 2100)
    return path


@pytest.mark.parametrize("kind, problem", [
    ("random", "is not UTF-8 text"), ("png", "is not UTF-8 text"), ("latin1", "is not UTF-8 text"),
    ("fifo", "is not a regular file"), ("device", "is not a regular file"), ("big", "larger than 1 MiB"),
])
def test_a_study_file_that_is_no_study_text_is_one_line(tmp_path, run_cli, kind, problem):
    path = binary(tmp_path, kind)
    before = every_file(tmp_path)
    message = refused(run_cli, "reproduce", "--study", path, "--out", tmp_path / "out")
    assert message.startswith(f"{path}: ") and problem in message
    assert every_file(tmp_path) == before


@pytest.mark.parametrize("text, where, problem", [
    ('[defaults]\nepochs = 0\n[[runs]]\nname = "a"', "defaults.epochs", "must be at least 1, got 0"),
    ('[defaults]\nepoch = 3\n[[runs]]\nname = "a"', "defaults.epoch", "unknown key; valid keys: model, width_mult,"),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "b"\nlam = "x"', "runs[1].lam", "must be a number, got 'x'"),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "b{seed}"\nseed = [0, -1]', "runs[1].seed[1]", "got -1"),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "b"\nmethod = "ct"\nlam = 2.0', "runs[1]", "--lam needs --method st"),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "a"', "runs[1].name", "two runs are named 'a' (runs[0] and runs[1])"),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "b"\nmodel = "timm:vit_tiny_patch16_224"\nmodel_args = [{ depth = 2 }, '
     '{ num_classes = 3 }]', "runs[1].model_args[1].num_classes", "--model-arg num_classes is not allowed"),
    ('[[runs]]\nname = "a"\n[evaluation]\ncalib_size = -5', "evaluation.calib_size", "must be at least"),
    ('[[runs]]\nname = "a"\n[measure]\nruns = ["a", "b"]', "measure.runs[1]", "unknown run 'b'; valid choices: a"),
    ('[[runs]]\nname = "a"\n[destruct]\nmodes = ["permute", "shuffle"]', "destruct.modes[1]",
     "unknown destruct mode 'shuffle'; valid choices: delete-one, delete-many, permute"),
    ('[[runs]]\nname = "a"\n[record.kl_every]\n"b.c" = 2', 'record.kl_every."b.c"', "unknown key; valid keys: a"),
    ('[[runs]]\nname = "a"\n[inside]\nruns = ["a"]\ncheckpoints = [{ path = "x.pt" }, { model = 3, path = "y" }]',
     "inside.checkpoints[1].model", "must be a string, got 3"),
    ('figures = ["fig4", "fig99"]\n[[runs]]\nname = "a"', "figures[1]", "unknown figure 'fig99'; valid choices: "),
])
def test_errors_in_a_study_file_name_the_entry_as_a_compiler_would(tmp_path, run_cli, text, where, problem):
    path = write(tmp_path, text)
    message = refused(run_cli, "reproduce", "--study", path, "--dry-run")
    assert message.startswith(f"{path}: {where}: ") and problem in message


def test_a_method_registered_with_a_colour_figures_cannot_draw_is_refused_when_registered():
    from loafing.methods import METHODS, TrainingMethod, register_method

    with pytest.raises(ValueError, match="method 'badcolour': colour 'notacolour' is not a colour matplotlib draws"):
        register_method(TrainingMethod("badcolour", "Bad colour", "notacolour", "never registered",
                                       lambda model, config, rng: None))
    assert "badcolour" not in METHODS
