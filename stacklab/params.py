"""Command-line value types shared by the commands.

click's ``FloatRange`` lets ``nan`` through (every comparison with it is
false) and ``float`` takes ``nan`` and ``inf``; a timer or a probability of
``nan`` then misbehaves far from the option that caused it.  These types
refuse both with the usual one-line usage error.
"""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that refuses ``nan`` and infinities."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


FINITE_FLOAT = FiniteFloatRange()
"""Any finite number (``type=float`` without ``nan`` and ``inf``)."""
