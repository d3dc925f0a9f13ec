"""Wire types and NDJSON framing. No sockets, no threads, no globals (the version pin)."""

from .admin import (
    AdminEvent,
    BackendState,
    Capabilities,
    CheckingLocal,
    Download,
    Draining,
    KvCache,
    LoadingModel,
    LoadPhase,
    Mmap,
    Quarantine,
    Ready,
    Restarting,
    Starting,
    StatusEvent,
    Verify,
    WaitingRemote,
    encode_status,
    parse_admin_event,
    status_to_dict,
)
from .embed import (
    EmbeddingsFrame,
    EmbedErrorFrame,
    EmbedRequest,
    EmbedResolved,
    EmbedResponse,
    EmbedTask,
    EmbedUsage,
    embed_error,
    parse_embed_request,
    parse_embed_response,
)
from .errors import DecodeError, EmbedErrorCode, ErrorCode, ErrorFrame, FrameTooLarge, InvalidRequest, ProtoError, encode_error
from .framing import MAX_FRAME_BYTES, FrameReader, encode_frame
from . import v2
from .v1 import (
    VALID_IMAGE_TOKEN_BUDGETS,
    DoneFrame,
    Message,
    Request,
    Resolved,
    Response,
    ProgressFrame,
    Role,
    StatusFrame,
    StopReason,
    Timings,
    TokenFrame,
    Usage,
    error_frame,
    parse_request,
    parse_response,
)

__all__ = [name for name in dir() if not name.startswith("_")]
