"""Async clients for apps talking to a local inferd daemon.

Imports only `inferd.proto`: an app can depend on this without llama-cpp-python.

    client = await dial_and_wait_ready(30, lambda: Client.dial_uds(default_inference_addr()))
    async for frame in client.generate(Request(messages=[Message(role=Role.USER, content="hi")])):
        ...

Protocol v2 (`ClientV2`, typed content blocks) uses the v2 wire types exported here
too (RequestV2, MessageV2, TextBlock, ...). `inferd.client.events` turns either
protocol's frames into typed turn events (`engine_events`).

Errors (seed 003): every failure of the library is a ClientError. A refused or
reset connection, a broken pipe or a missing socket is a ClientIOError (which is
also the builtin OSError of that kind), a dial that gives up a WaitError
(WaitTimeout, WaitPermanent). ProtoError (with InvalidRequest) is what the wire
types raise for a request that cannot be sent, such as an ImageTokenBudget outside
70/140/280/560/1120; Resolved is a request after the daemon's checks.

`generate(request, progress=True)` asks for progress frames (queue position,
prompt reading, context) before the first token; `EventSession` / `engine_events`
turn them into spinner and status events.

Every dial takes `connect_timeout` (5 s), `read_timeout` (None: unbounded, since a
queued request may wait long) and `write_timeout` (30 s); expiry raises
ConnectTimeout / ReadTimeout / WriteTimeout (all ClientTimeout, ClientError and
TimeoutError) and closes the connection.
"""

from inferd.proto.admin import AdminEvent
from inferd.proto.embed import EmbeddingsFrame, EmbedErrorFrame, EmbedRequest, EmbedResponse, EmbedTask, EmbedUsage
from inferd.proto.endpoints import default_admin_addr, default_embed_addr, default_inference_addr, default_v2_addr
from inferd.proto.errors import EmbedErrorCode, ErrorCode, InvalidRequest, ProtoError
from inferd.proto.framing import MAX_FRAME_BYTES
from inferd.proto.v1 import (
    VALID_IMAGE_TOKEN_BUDGETS,
    ContextInfo,
    CountFrame,
    DoneFrame,
    ErrorFrame,
    Message,
    ProgressFrame,
    Request,
    Resolved,
    Response,
    ResponseFormat,
    Role,
    StatusFrame,
    StopReason,
    Timings,
    TokenFrame,
    Usage,
)
from inferd.proto.v2 import (
    DEFAULT_V2_MAX_TOKENS,
    Attachment,
    AudioAttachment,
    AudioBlock,
    ContentBlock,
    DoneFrameV2,
    ErrorCodeV2,
    ErrorFrameV2,
    FrameV2,
    ImageAttachment,
    ImageBlock,
    MessageV2,
    RequestV2,
    ResponseBlock,
    ResponseV2,
    RoleV2,
    StopReasonV2,
    TextBlock,
    TextDeltaBlock,
    ThinkingDeltaBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
    UnknownAttachment,
    UnknownBlock,
    UsageV2,
    VideoAttachment,
    VideoBlock,
)

from .budget import ImageTokenBudget
from .admin import SNAPSHOT_TIMEOUT, AdminClient, AdminSnapshot
from .client import Client, FrameStream
from .client_v2 import ClientV2, FrameStreamV2, FrameV2Any
from .embed import EmbedClient
from .errors import (
    AdminClosed,
    BrokenPipe,
    ClientDecodeError,
    ClientError,
    ClientIOError,
    ClientTimeout,
    ConnectionAborted,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    PermissionDenied,
    ReadTimeout,
    SocketNotFound,
    UnexpectedEof,
    WriteTimeout,
)
from .events import EngineEvent, EventSession, TurnEndReason, engine_events
from .transport import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT
from .wait import WaitError, WaitPermanent, WaitTimeout, dial_and_wait_ready, is_transient_dial_error

__all__ = [
    "AdminClient",
    "AdminClosed",
    "AdminEvent",
    "AdminSnapshot",
    "Attachment",
    "AudioAttachment",
    "AudioBlock",
    "BrokenPipe",
    "Client",
    "ClientDecodeError",
    "ClientError",
    "ClientIOError",
    "ClientTimeout",
    "ClientV2",
    "ConnectTimeout",
    "ConnectionAborted",
    "ConnectionRefused",
    "ConnectionReset",
    "ContentBlock",
    "ContextInfo",
    "CountFrame",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_V2_MAX_TOKENS",
    "DEFAULT_WRITE_TIMEOUT",
    "DoneFrame",
    "DoneFrameV2",
    "EmbedClient",
    "EmbedErrorCode",
    "EmbedErrorFrame",
    "EmbedRequest",
    "EmbedResponse",
    "EmbedTask",
    "EmbedUsage",
    "EmbeddingsFrame",
    "EngineEvent",
    "ErrorCode",
    "ErrorCodeV2",
    "ErrorFrame",
    "ErrorFrameV2",
    "EventSession",
    "FrameStream",
    "FrameStreamV2",
    "FrameV2",
    "FrameV2Any",
    "ImageAttachment",
    "ImageBlock",
    "ImageTokenBudget",
    "InvalidRequest",
    "MAX_FRAME_BYTES",
    "Message",
    "MessageV2",
    "PermissionDenied",
    "ProgressFrame",
    "ProtoError",
    "ReadTimeout",
    "Request",
    "RequestV2",
    "Resolved",
    "Response",
    "ResponseBlock",
    "ResponseFormat",
    "ResponseV2",
    "Role",
    "RoleV2",
    "SNAPSHOT_TIMEOUT",
    "SocketNotFound",
    "StatusFrame",
    "StopReason",
    "StopReasonV2",
    "TextBlock",
    "TextDeltaBlock",
    "ThinkingDeltaBlock",
    "Timings",
    "TokenFrame",
    "Tool",
    "ToolResultBlock",
    "ToolUseBlock",
    "TurnEndReason",
    "UnexpectedEof",
    "UnknownAttachment",
    "UnknownBlock",
    "Usage",
    "UsageV2",
    "VALID_IMAGE_TOKEN_BUDGETS",
    "VideoAttachment",
    "VideoBlock",
    "WaitError",
    "WaitPermanent",
    "WaitTimeout",
    "WriteTimeout",
    "default_admin_addr",
    "default_embed_addr",
    "default_inference_addr",
    "default_v2_addr",
    "dial_and_wait_ready",
    "engine_events",
    "is_transient_dial_error",
]
