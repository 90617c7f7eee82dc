"""Argument parsing shared by the ``prefscore`` commands (metric lists, ``--model``, ``--option``)."""

from __future__ import annotations

import json
from typing import Callable, Sequence

import typer


def split_names(items: Sequence[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (repeated and comma-separated options)."""
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def parse_pairs(items: Sequence[str], what: str, cast: Callable = str) -> dict:
    """``KEY=VALUE`` items -> dict, VALUE converted with ``cast``; clear errors naming the option."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = cast(value.strip())
        except ValueError:
            raise typer.BadParameter(f"{what} {item!r}: {value!r} is not a valid value") from None
    return out


def parse_models(items: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--model`` values: ``METRIC=SOURCE``, or a bare SOURCE when exactly one metric is named."""
    if len(items) == 1 and len(names) == 1 and "=" not in items[0]:
        return {names[0]: items[0]}
    out = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise typer.BadParameter(f"--model {item!r}: with several metrics write METRIC=SOURCE")
        out[name.strip()] = source.strip()
    return out


def parse_options(items: Sequence[str], names: Sequence[str] = ()) -> dict[str, dict]:
    """``--option`` values: ``METRIC.KEY=VALUE``, or ``KEY=VALUE`` for every metric in ``names``.

    VALUE is parsed as JSON when it can be (numbers, lists, quoted strings), else kept as text.
    """
    out: dict[str, dict] = {n: {} for n in names}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--option {item!r}: expected METRIC.KEY=VALUE or KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        metric, dot, option = key.strip().rpartition(".")
        if dot and (metric in names or not names):
            out.setdefault(metric, {})[option] = parsed
        elif names:
            for n in names:
                out[n][key.strip()] = parsed
        else:
            raise typer.BadParameter(f"--option {item!r}: expected METRIC.KEY=VALUE")
    return out
