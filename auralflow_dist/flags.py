"""argparse flags generated from the config dataclasses: every command's flags, one mechanism.

Field ``a_b`` is accepted as ``--a-b`` and ``--a_b`` (the seeds' README uses both). The field's
metadata (written with `config.option`) refines its flag:

- ``help``: the help text; a default other than None is appended (say what None means in it);
- ``aliases``: more field-style names, each accepted both ways;
- ``choices``, ``metavar``: as in argparse;
- ``positional``: an argument, not a flag (a field without a default is otherwise a required flag);
- ``switch``: a boolean without a value (``--resume``); other booleans take an optional one
  (``--flag``, ``--flag true``, ``--flag false``), so ``--flag false`` is false;
- ``flag`` and ``parse``: fields set together by one flag (``--workers N|MIN:MAX``) name it; the
  first of them defines it, its ``parse`` turns the text into their values.

A section (a field whose type is a dataclass) contributes its fields' flags. Defaults stay
``None`` in argparse: only what the user typed overrides a config file or the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from auralflow_dist.config import leaves
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


def _help(meta: dict[str, Any], default: Any) -> str:
    if default is None or meta.get("positional") or meta.get("switch"):
        return meta.get("help", "")
    return f"{meta.get('help', '')} (default: {default})".strip()


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag (or positional argument) per field of ``cls``, sections included."""
    added: set[str] = set()
    for name, (f, kind) in leaves(cls).items():
        meta = dict(f.metadata)
        dest = meta.get("flag", name)
        if dest in added:
            continue
        added.add(dest)
        common: dict[str, Any] = {"help": _help(meta, f.default)}
        for key in ("choices", "metavar"):
            if key in meta:
                common[key] = meta[key]
        plain = str if "parse" in meta else _base_type(kind)
        convert = plain if plain in (int, float) else None  # None: argparse's str
        if meta.get("positional"):
            if f.default is not dataclasses.MISSING:  # optional: a preset or the default fills it
                common.update(nargs="?", default=None)
            parser.add_argument(dest, type=convert, **common)
            continue
        spellings = [s for n in (dest, *meta.get("aliases", ())) for s in (flag_name(n), "--" + n)]
        spellings = list(dict.fromkeys(spellings))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            common["required"] = True
        if meta.get("switch"):
            parser.add_argument(*spellings, dest=dest, action="store_true", default=None, **common)
        elif plain is bool:
            common.setdefault("metavar", "BOOL")
            parser.add_argument(
                *spellings,
                dest=dest,
                nargs="?",
                const=True,
                default=None,
                type=parse_bool,
                **common,
            )
        else:
            parser.add_argument(*spellings, dest=dest, default=None, type=convert, **common)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line, by flat name."""
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for name, (f, _) in leaves(cls).items():
        dest = f.metadata.get("flag", name)
        value = getattr(args, dest, None)
        if dest in seen or value is None:
            continue
        seen.add(dest)
        parse = f.metadata.get("parse")
        values.update(parse(value) if parse else {name: value})
    return values


def explain(err: ConfigError) -> str:
    """Name the flag behind a config field in an error message."""
    return f"{flag_name(err.field)}: {err.reason}" if err.field.isidentifier() else str(err)
