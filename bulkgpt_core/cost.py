"""What tokens cost, per model, in US dollars per million tokens.

The table holds Google's published list prices for the paid tier (prompts up
to 200k tokens). Prices change: ``checked`` says when each was last compared
with Google's pricing page, and ``BULKGPT_PRICES`` (JSON, for example
``{"gemini-2.5-flash": [0.30, 2.50]}``) overrides or adds models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float
    checked: str = ""

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_m + tokens_out * self.output_per_m) / 1e6


PRICES: dict[str, Price] = {
    "gemini-2.5-pro": Price(1.25, 10.00, "2025-09"),
    "gemini-2.5-flash": Price(0.30, 2.50, "2025-09"),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, "2025-09"),
    "gemini-2.0-flash": Price(0.10, 0.40, "2025-09"),
    "gemini-2.0-flash-lite": Price(0.075, 0.30, "2025-09"),
    "demo": Price(0.0, 0.0, "always free"),
}
#: Used for a model the table does not know, so cost is never silently zero.
UNKNOWN_MODEL_PRICE = PRICES["gemini-2.5-pro"]


def parse_price_overrides(raw: str) -> dict[str, Price]:
    """Read ``BULKGPT_PRICES``: a JSON object of model -> [input, output]."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        return {
            str(model): Price(float(pair[0]), float(pair[1]), "set in BULKGPT_PRICES")
            for model, pair in data.items()
        }
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ConfigError(
            "BULKGPT_PRICES must be JSON like "
            '{"gemini-2.5-flash": [0.30, 2.50]} (dollars per million input and '
            f"output tokens): {exc}"
        ) from exc


def price_for(model: str, overrides: dict[str, Price] | None = None) -> Price:
    """The price of a model, matching versioned names by their family."""
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    name = model.removeprefix("models/")
    for known in sorted(table, key=len, reverse=True):
        if name.startswith(known):
            return table[known]
    return UNKNOWN_MODEL_PRICE
