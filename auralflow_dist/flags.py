"""argparse flags generated from the config dataclasses, so every field has exactly one flag.

Each field ``a_b`` is accepted as ``--a-b`` and ``--a_b`` (the seeds' README uses both);
booleans take an optional value (``--flag``, ``--flag true``, ``--flag false``), so
``--flag false`` is false. Defaults stay ``None`` here: only what the user typed overrides the
config file or the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from auralflow_dist.errors import ConfigError


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    aliases: dict[str, list[str]] | None = None,
    help_text: dict[str, str] | None = None,
) -> None:
    """One flag per field of ``cls``; ``aliases`` maps a field to extra spellings."""
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    help_text = help_text or {}
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        spellings = [flag_name(f.name), "--" + f.name]
        for alias in aliases.get(f.name, []):
            spellings += [flag_name(alias), "--" + alias]
        spellings = list(dict.fromkeys(spellings))
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{help_text.get(f.name, '')} (default: {default})".strip()
        if kind is bool:
            parser.add_argument(
                *spellings,
                dest=f.name,
                nargs="?",
                const=True,
                default=None,
                type=parse_bool,
                metavar="BOOL",
                help=text,
            )
        else:
            parser.add_argument(
                *spellings,
                dest=f.name,
                default=None,
                type=kind if kind in (int, float) else str,
                help=text,
            )


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def explain(err: ConfigError) -> str:
    """Name the flag behind a config field in an error message."""
    return f"{flag_name(err.field)}: {err.reason}" if err.field.isidentifier() else str(err)
