"""Async clients for apps talking to a local inferd daemon.

Imports only `inferd.proto`: an app can depend on this without llama-cpp-python.

    client = await dial_and_wait_ready(30, lambda: Client.dial_uds(default_inference_addr()))
    async for frame in client.generate(Request(messages=[Message(role=Role.USER, content="hi")])):
        ...
"""

from inferd.proto.admin import AdminEvent
from inferd.proto.embed import EmbeddingsFrame, EmbedErrorFrame, EmbedRequest, EmbedResponse, EmbedTask, EmbedUsage
from inferd.proto.endpoints import default_admin_addr, default_embed_addr, default_inference_addr, default_v2_addr
from inferd.proto.errors import EmbedErrorCode, ErrorCode
from inferd.proto.framing import MAX_FRAME_BYTES
from inferd.proto.v1 import (
    VALID_IMAGE_TOKEN_BUDGETS,
    DoneFrame,
    ErrorFrame,
    Message,
    Request,
    Response,
    Role,
    StatusFrame,
    StopReason,
    Timings,
    TokenFrame,
    Usage,
)

from .admin import AdminClient
from .client import Client, FrameStream
from .client_v2 import ClientV2, FrameStreamV2
from .embed import EmbedClient
from .errors import AdminClosed, ClientDecodeError, ClientError, UnexpectedEof
from .wait import WaitPermanent, WaitTimeout, dial_and_wait_ready, is_transient_dial_error

__all__ = [
    "AdminClient",
    "AdminClosed",
    "AdminEvent",
    "Client",
    "ClientV2",
    "ClientDecodeError",
    "ClientError",
    "DoneFrame",
    "EmbedClient",
    "EmbedErrorCode",
    "EmbedErrorFrame",
    "EmbedRequest",
    "EmbedResponse",
    "EmbedTask",
    "EmbedUsage",
    "EmbeddingsFrame",
    "ErrorCode",
    "ErrorFrame",
    "FrameStream",
    "FrameStreamV2",
    "MAX_FRAME_BYTES",
    "Message",
    "Request",
    "Response",
    "Role",
    "StatusFrame",
    "StopReason",
    "Timings",
    "TokenFrame",
    "UnexpectedEof",
    "Usage",
    "VALID_IMAGE_TOKEN_BUDGETS",
    "WaitPermanent",
    "WaitTimeout",
    "default_admin_addr",
    "default_embed_addr",
    "default_inference_addr",
    "default_v2_addr",
    "dial_and_wait_ready",
    "is_transient_dial_error",
]
