"""Argument types shared by the project's command lines (clear one-line errors from argparse)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Literal


def bounded_int(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its messages
    return parse


positive_int = bounded_int(1)
non_negative_int = bounded_int(0)


class UsageError(ValueError):
    """A bad command line; the message is one line."""


def comma_list(text: str, flag: str, *, repeated: Literal["drop", "reject"] = "drop") -> list[str]:
    """The items of a comma-separated ``text`` (stripped), in order.

    An empty list or item is an error; repeated items are dropped (``repeated="drop"``, the
    sweep's axes) or an error (``repeated="reject"``, the locustfile's options, where each item
    becomes a user class).
    """
    text = str(text)
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise UsageError(f"{flag}: expected a comma-separated list, got {text!r}")
    if any(not item for item in items):
        raise UsageError(f"{flag}: empty item in {text!r}")
    if repeated == "reject" and len(set(items)) != len(items):
        raise UsageError(f"{flag}: repeated item in {text!r}")
    return list(dict.fromkeys(items))
