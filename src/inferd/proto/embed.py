"""The embed socket's wire (upstream ADR 0017, upstream-protocol §5)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

from . import limits
from .errors import DecodeError, EmbedErrorCode, ErrorFrame, InvalidRequest
from .limits import MAX_EMBED_INPUTS, MAX_EMBED_VALUES
from .v1 import U32, _summarise, error_frame


class EmbedTask(StrEnum):
    RETRIEVAL_QUERY = "retrieval_query"
    RETRIEVAL_DOCUMENT = "retrieval_document"
    SIMILARITY = "similarity"
    CLASSIFICATION = "classification"
    CLUSTERING = "clustering"
    QUESTION_ANSWERING = "question_answering"
    FACT_VERIFICATION = "fact_verification"
    CODE_RETRIEVAL_QUERY = "code_retrieval_query"


class EmbedRequest(BaseModel):
    # cache_strings="keys": ids and texts are unique per request; caching them only grows memory.
    model_config = ConfigDict(extra="ignore", cache_strings="keys")

    id: StrictStr = ""
    input: list[StrictStr]
    dimensions: U32 | None = None
    # Any string parses (a newer client's task must not close the connection);
    # resolve() rejects names this daemon does not know.
    task: StrictStr | None = None
    # inferd extension (issue 20): the embedding model by name; absent = the default.
    model: StrictStr | None = None
    # inferd extension (issue 20): how long the model stays loaded after this request,
    # Ollama's keep_alive (seconds or "5m"; 0 = unload after it; negative = for ever).
    keep_alive: StrictInt | StrictFloat | StrictStr | None = None

    def resolve(self) -> "EmbedResolved":
        limits.check_id(self.id)
        if not self.input:
            raise InvalidRequest("input must not be empty")
        if len(self.input) > MAX_EMBED_INPUTS:
            # A 64 MiB line holds millions of one-letter inputs, each a full vector.
            raise InvalidRequest(f"input has {len(self.input)} entries; at most {MAX_EMBED_INPUTS} per request")
        for i, text in enumerate(self.input):
            if text == "":
                raise InvalidRequest(f"input[{i}] must not be empty")
        if self.dimensions is not None and len(self.input) * self.dimensions > MAX_EMBED_VALUES:
            # THREAT_MODEL F-1: the reply must fit one frame; refuse before any compute.
            raise InvalidRequest(
                f"{len(self.input)} inputs x {self.dimensions} dimensions = {len(self.input) * self.dimensions} "
                f"numbers; a reply holds at most {MAX_EMBED_VALUES} (MAX_EMBED_VALUES)"
            )
        task: EmbedTask | None = None
        if self.task is not None:
            try:
                task = EmbedTask(self.task)
            except ValueError:
                raise InvalidRequest("task uses an unknown variant") from None
        return EmbedResolved(id=self.id, input=list(self.input), dimensions=self.dimensions, task=task,
                             model=self.model, keep_alive=self.keep_alive)


class EmbedResolved(BaseModel):
    id: str
    input: list[str]
    dimensions: int | None = None
    task: EmbedTask | None = None
    model: str | None = None
    keep_alive: int | float | str | None = None


class EmbedUsage(BaseModel):
    input_tokens: int


class EmbeddingsFrame(BaseModel):
    type: Literal["embeddings"] = "embeddings"
    id: str
    embeddings: list[list[float]]
    dimensions: int
    model: str
    usage: EmbedUsage
    backend: str


EmbedErrorFrame = ErrorFrame  # the one error frame shape (errors.py)


EmbedResponse = Annotated[Union[EmbeddingsFrame, EmbedErrorFrame], Field(discriminator="type")]
_EMBED_RESPONSE = TypeAdapter(EmbedResponse)


def parse_embed_request(line: bytes | str) -> EmbedRequest:
    limits.check_json_budget(line)  # InvalidRequest before parsing: too many JSON values
    try:
        return EmbedRequest.model_validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None


def parse_embed_response(line: bytes | str) -> EmbeddingsFrame | EmbedErrorFrame:
    try:
        return _EMBED_RESPONSE.validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None


embed_error = error_frame
