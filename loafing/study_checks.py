"""The checks of a study file's text and values, each failure one line naming the file and the entry as a compiler
would: `runs[2].lam` (arrays count from 0), `defaults.epochs`, `record.kl_every."a.b"`, `figures[1]`."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from loafing.config import OptionSpec, check_value
from loafing.errors import LoafingError

MAX_STUDY_BYTES = 1 << 20  # a study file is a page of settings; anything bigger is another file given by mistake
KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key written without quotes
# A name that becomes a folder (a run's out/runs/NAME, a study's reproduce/NAME): one path component, portable.
FOLDER_NAME = re.compile(r"[A-Za-z0-9_.+=-]+")
FOLDER_RULE = "letters, digits and - _ . + = only, not '.' or '..'"


def entry(where: str, key: str | int) -> str:
    """The entry `key` inside `where` (empty: the top level), as a compiler names it: runs[2], defaults.lam."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    key = key if BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{where}.{key}" if where else key


def fail(path: Path, where: str, problem: str) -> LoafingError:
    """The one-line error of a study file: which file, which entry in it, what is wrong."""
    return LoafingError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def read_study_text(path: Path) -> str:
    """The text of a study file: a regular file of at most MAX_STUDY_BYTES of UTF-8 (never a FIFO or a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: opening a FIFO must not wait for a writer
    except OSError as error:
        raise LoafingError(f"cannot read study file {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise fail(path, "", "is not a regular file; a study file is TOML text")
        data = file.read(MAX_STUDY_BYTES + 1)
    if len(data) > MAX_STUDY_BYTES:
        raise fail(path, "", f"is larger than {MAX_STUDY_BYTES >> 20} MiB; a study file is a page of TOML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise fail(path, "", f"is not UTF-8 text (line {line}: byte 0x{data[error.start]:02x}); a study file is "
                             "TOML text in UTF-8") from None


def check_keys(path: Path, where: str, table: Any, valid: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`table` itself, once it is a table holding only keys of `valid`."""
    if not isinstance(table, dict):
        raise fail(path, where, f"must be a table, got {table!r}")
    for key in table:
        if key not in valid:
            raise fail(path, entry(where, key), f"unknown key; valid keys: {', '.join(valid)}")
    return table


def typed(path: Path, where: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (an integer is a number too), or a one-line error naming the entry and the kind."""
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise fail(path, where, f"must be {KINDS.get(kind, kind.__name__)}, got {value!r}")
    return value


def setting(path: Path, where: str, spec: OptionSpec, value: Any) -> Any:
    """One setting at entry `where` checked against its option: type, range, choices."""
    value = typed(path, where, value, spec.kind)
    try:
        check_value("", value, spec.range, spec.choices, spec.what)  # no flag: the entry names the setting
    except LoafingError as error:
        raise fail(path, where, str(error).strip()) from None
    return value


def run_names(path: Path, where: str, value: Any, valid: list[str]) -> tuple[str, ...]:
    """A list of run names, each one of `valid`."""
    if not isinstance(value, list):
        raise fail(path, where, f"must be a list of run names, got {value!r}")
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in valid:
            raise fail(path, entry(where, i), f"unknown run {name!r}; valid choices: {', '.join(valid)}")
    return tuple(value)


def model_args(path: Path, where: str, value: Any) -> dict[str, Any]:
    """A run's model_args: a table of a timm / torchvision builder's keyword arguments, each checked."""
    from loafing.models.registry import check_model_args  # torch-free

    if not isinstance(value, dict):
        raise fail(path, where, f"must be a table such as {{ img_size = 32 }}, got {value!r}")
    for key, item in value.items():
        try:
            check_model_args({key: item})
        except LoafingError as error:
            raise fail(path, entry(where, key), str(error)) from None
    return check_model_args(value)


def folder_name(path: Path, where: str, name: str, what: str) -> str:
    """`name`, once it is a single portable folder name (it names `what`), never a path that leads elsewhere."""
    if not FOLDER_NAME.fullmatch(name) or name in (".", ".."):
        raise fail(path, where, f"{name!r} cannot name {what}: a name is one folder name, {FOLDER_RULE}")
    return name
