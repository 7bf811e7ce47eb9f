"""Plait protocol v1, sans-I/O: frames, codec, errors, connection state machine, traces.

Normative text: spec/protocol.md. Nothing here does I/O, reads a clock or imports trio.
"""

from __future__ import annotations

from ._errors import (
    ErrorCode as ErrorCode,
    CloseCode as CloseCode,
    ProtocolError as ProtocolError,
    LocalProtocolError as LocalProtocolError,
    RemoteProtocolError as RemoteProtocolError,
    APPLICATION_ERROR_RANGE as APPLICATION_ERROR_RANGE,
    TransportClosed as TransportClosed,
    ABNORMAL_CLOSURE as ABNORMAL_CLOSURE,
    close_code_for as close_code_for,
)
from ._fields import (
    MAX_DEPTH as MAX_DEPTH,
    check_value as check_value,
)
from ._frames import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    SUPPORTED_VERSIONS as SUPPORTED_VERSIONS,
    FrameKind as FrameKind,
    Sender as Sender,
    Access as Access,
    Frame as Frame,
    FRAME_TYPES as FRAME_TYPES,
    Limits as Limits,
    PresenceEntry as PresenceEntry,
    PresenceState as PresenceState,
    CursorPosition as CursorPosition,
    Hello as Hello,
    Welcome as Welcome,
    Ping as Ping,
    Pong as Pong,
    Error as Error,
    Ack as Ack,
    Join as Join,
    Joined as Joined,
    Leave as Leave,
    ChannelClosed as ChannelClosed,
    SyncStep1 as SyncStep1,
    SyncStep2 as SyncStep2,
    Update as Update,
    PresenceSet as PresenceSet,
    PresencePatch as PresencePatch,
    PresenceSnapshot as PresenceSnapshot,
    PresenceDiff as PresenceDiff,
    CursorMove as CursorMove,
    Cursors as Cursors,
    Typing as Typing,
    TypingState as TypingState,
    Publish as Publish,
    Event as Event,
    MAX_ROOM_NAME as MAX_ROOM_NAME,
    MAX_EVENT_NAME as MAX_EVENT_NAME,
    MAX_LIST as MAX_LIST,
    MAX_PRESENCE_BYTES as MAX_PRESENCE_BYTES,
    check_room_name as check_room_name,
)
from ._codec import (
    decode as decode,
    ChannelFrame as ChannelFrame,
    frame_to_array as frame_to_array,
    encode as encode,
    encode_frame as encode_frame,
    encode_trusted as encode_trusted,
    encoded_size as encoded_size,
    join_encoded as join_encoded,
    CodecLimits as CodecLimits,
    DEFAULT_LIMITS as DEFAULT_LIMITS,
    MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES,
    MAX_FRAMES_PER_MESSAGE as MAX_FRAMES_PER_MESSAGE,
    KiB as KiB,
    MiB as MiB,
)
from ._connection import (
    Connection as Connection,
    Role as Role,
    SessionState as SessionState,
    STALE as STALE,
    Stale as Stale,
    TRANSITIONS as TRANSITIONS,
    state_diagram as state_diagram,
)
from ._trace import (
    Trace as Trace,
    TraceHeader as TraceHeader,
    TraceRecord as TraceRecord,
    TraceWriter as TraceWriter,
    TraceError as TraceError,
    Open as Open,
    Close as Close,
    Raw as Raw,
    Stored as Stored,
    read_trace as read_trace,
    write_trace as write_trace,
)
from ._ycrdt import (
    GC_STRUCT as GC_STRUCT,
    SKIP_STRUCT as SKIP_STRUCT,
    TYPE_CONTENT as TYPE_CONTENT,
    DecodedUpdate as DecodedUpdate,
    YId as YId,
    Struct as Struct,
    check_state_vector as check_state_vector,
    check_update as check_update,
    read_state_vector as read_state_vector,
    read_update as read_update,
    MAX_ANY_DEPTH as MAX_ANY_DEPTH,
)
from ._ysplit import (
    split_update as split_update,
    SplitError as SplitError,
    MIN_SPLIT_BYTES as MIN_SPLIT_BYTES,
    PIECE_OVERHEAD as PIECE_OVERHEAD,
    FRAME_OVERHEAD as FRAME_OVERHEAD,
)
from ._yjs import (
    YJS_PATH as YJS_PATH,
    AwarenessEntry as AwarenessEntry,
    YAuth as YAuth,
    YAwareness as YAwareness,
    YMessage as YMessage,
    YMessageKind as YMessageKind,
    YQueryAwareness as YQueryAwareness,
    YSync as YSync,
    YSyncStep as YSyncStep,
    decode_y as decode_y,
    encode_awareness as encode_awareness,
    encode_sync as encode_sync,
    encode_y as encode_y,
)
from ._transport import Transport as Transport
from ._json import (
    decode_json as decode_json,
    encode_json as encode_json,
    frame_from_json as frame_from_json,
    frame_to_json as frame_to_json,
)
