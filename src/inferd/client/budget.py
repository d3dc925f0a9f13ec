"""`ImageTokenBudget`: a value of `image_token_budget` the daemon accepts, checked on
the client's side so a bad one fails before a request is sent (seed 003)."""

from __future__ import annotations

from inferd.proto.v1 import VALID_IMAGE_TOKEN_BUDGETS


class ImageTokenBudget(int):
    """70, 140, 280, 560 or 1120 image tokens; any other value raises ValueError (the
    daemon would answer `invalid_request`). An int, so it goes on a Request as is."""

    def __new__(cls, value: int) -> "ImageTokenBudget":
        if isinstance(value, bool) or not isinstance(value, int) or value not in VALID_IMAGE_TOKEN_BUDGETS:
            allowed = ", ".join(str(v) for v in sorted(VALID_IMAGE_TOKEN_BUDGETS))
            raise ValueError(f"image_token_budget {value!r} not in [{allowed}]")
        return super().__new__(cls, value)
