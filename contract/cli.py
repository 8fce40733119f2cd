"""Argument types shared by the project's command lines (clear one-line errors from argparse)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
