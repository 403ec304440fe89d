"""How each registered training method is shown in the tables: its label, colour, role and registry position (the
rows' method_* columns), and which of its options make a run another scheme (the `variant` column).

The method registry declares them here, so that neither this module nor `loafing.schema` imports the registry.
"""
from __future__ import annotations

from typing import Any, Mapping

STYLE_COLUMNS = ("method_label", "method_colour", "method_role", "method_order")
# The `method` of a foreign checkpoint's rows (akamaster, torchvision): trained elsewhere, not by a registered method.
FOREIGN_METHOD = "external"
FOREIGN_STYLE = ("foreign checkpoint", "#8c8c8c", "conventional")  # label, colour, role; no registry position

_method_styles: dict[str, tuple[str, str, str]] = {}  # registered method -> (label, colour, role), in registry order
_method_variants: dict[str, dict[str, Any]] = {}  # registered method -> its variant options and their defaults


def add_method_style(method: str, label: str, colour: str, role: str) -> None:
    """Declare how a registered training method is shown (its rows' method_* columns); the method registry calls
    this."""
    _method_styles[method] = (label, colour, role)


def remove_method_style(method: str) -> None:
    """Forget a method's style (for methods registered only for a while, e.g. in tests)."""
    _method_styles.pop(method, None)


def add_method_variants(method: str, defaults: Mapping[str, Any]) -> None:
    """Declare a registered method's variant options (name -> default), as add_method_style declares its style."""
    _method_variants[method] = dict(defaults)


def remove_method_variants(method: str) -> None:
    """Forget a method's variant options."""
    _method_variants.pop(method, None)


def variant_text(method: str | None, settings: Mapping[str, Any]) -> str:
    """The `variant` cell of a run: its method's variant options off their defaults, "name=value, ..." (or empty)."""
    def shown(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{name}={shown(settings[name])}" for name, default in _method_variants.get(method, {}).items()
                     if name in settings and settings[name] != default)


def method_style(method: str) -> dict[str, Any]:
    """The method_* columns' values for rows of `method`: its registered style and position, the foreign style,
    or empty for a method that is not registered here."""
    if method == FOREIGN_METHOD:
        return dict(zip(STYLE_COLUMNS, (*FOREIGN_STYLE, None)))
    if method in _method_styles:
        return dict(zip(STYLE_COLUMNS, (*_method_styles[method], list(_method_styles).index(method))))
    return dict(zip(STYLE_COLUMNS, ("", "", "", None)))
