"""What a model is before it is in the store: its pinned spec, and the store's errors.

Shared by the store (store.py) and the downloader (fetch.py), which both need it and
must not need each other at import time; the config layer imports `ModelSpec` too.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}


class StoreError(Exception):
    """The store cannot provide the model; the message tells the operator what to do."""


class ShaMismatch(StoreError):
    """Bytes whose SHA-256 is not the pinned one."""


def validate_model_name(name: str) -> str:
    """Model names become file names, so only a conservative portable subset is allowed."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-128 ASCII letters, digits, '.', '-' or '_'"
        )
    if name.startswith("."):
        raise ValueError(f"invalid model name {name!r}: must not start with '.'")
    if ".." in name:
        raise ValueError(f"invalid model name {name!r}: must not contain '..'")
    if name.split(".", 1)[0].upper() in _RESERVED:
        raise ValueError(f"invalid model name {name!r}: {name.split('.', 1)[0]} is a reserved device name on Windows")
    return name


def validate_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise ValueError("sha256 must be exactly 64 hexadecimal characters")
    return value.lower()


class ModelSpec(BaseModel):
    """A pinned model: the store name, the SHA-256 it must have, and where to fetch it from."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str
    repo: str | None = None
    filename: str | None = None
    revision: str = "main"
    size_bytes: int | None = Field(default=None, ge=0)
    license: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_model_name(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        return validate_sha256(v)

    @model_validator(mode="after")
    def _source(self) -> "ModelSpec":
        if (self.repo is None) != (self.filename is None):
            raise ValueError("`repo` and `filename` go together: set both (Hugging Face source) or neither (store only)")
        if self.repo is not None and (not self.repo.strip() or not self.filename or not self.filename.strip()):
            raise ValueError("`repo` and `filename` must not be empty")
        if not self.revision:
            raise ValueError("`revision` must not be empty")
        return self
