"""ImageTokenBudget: an image-token budget that can only hold a value the daemon accepts.

    Request(messages=..., image_token_budget=ImageTokenBudget(280))

Seed 003 wraps the budget in a type whose constructor enforces the set, so a bad
value fails in the app, before any request is sent, instead of as the daemon's
`invalid_request` a round trip later. It is an int, so it goes wherever the wire's
`image_token_budget` goes. `Client.generate` makes the same check on a plain int.
"""

from __future__ import annotations

from typing import Any

from inferd.proto.errors import InvalidRequest
from inferd.proto.v1 import VALID_IMAGE_TOKEN_BUDGETS


class ImageTokenBudget(int):
    """One of VALID_IMAGE_TOKEN_BUDGETS (70, 140, 280, 560, 1120); anything else
    raises InvalidRequest (a ProtoError), worded as the daemon words it."""

    VALID = VALID_IMAGE_TOKEN_BUDGETS

    def __new__(cls, value: Any) -> "ImageTokenBudget":
        _refuse_unless_valid(value)
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"ImageTokenBudget({int(self)})"


def check_image_token_budget(value: Any) -> None:
    """InvalidRequest unless `value` is an int in VALID_IMAGE_TOKEN_BUDGETS (None passes:
    the field is optional)."""
    if value is not None:
        _refuse_unless_valid(value)


def _refuse_unless_valid(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in VALID_IMAGE_TOKEN_BUDGETS:
        allowed = ", ".join(str(v) for v in VALID_IMAGE_TOKEN_BUDGETS)
        raise InvalidRequest(f"image_token_budget {value} not in [{allowed}]")
