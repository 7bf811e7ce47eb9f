"""The connection state machine (spec §6): a ConnectionPair wires a client and a server side
together through real bytes, like h11's ConnectionPair.
"""

from __future__ import annotations

import pytest

from plait.protocol import (
    STALE,
    ChannelClosed,
    Connection,
    ErrorCode,
    Frame,
    Hello,
    Join,
    Joined,
    Leave,
    Limits,
    LocalProtocolError,
    Ping,
    RemoteProtocolError,
    Role,
    SessionState,
    Update,
    Welcome,
    encode,
)

LIMITS = Limits(1 << 20, 1024, 64, 50, 200, 64 * 1024, 200, 64 << 20)


class ConnectionPair:
    def __init__(self) -> None:
        self.client = Connection(Role.CLIENT)
        self.server = Connection(Role.SERVER)

    def client_sends(self, *frames: Frame) -> list[Frame]:
        return self.server.receive_data(self.client.send_data(frames))

    def server_sends(self, *frames: Frame) -> list[Frame]:
        return self.client.receive_data(self.server.send_data(frames))

    def handshake(self) -> None:
        self.client_sends(Hello(versions=(1,), token=None, client={}))
        self.server_sends(Welcome(version=1, session="s1", heartbeat_ms=1000, limits=LIMITS))

    def join(self, channel: int = 1) -> None:
        self.client_sends(Join(ref=channel, room=f"r{channel}", state_vector=None, since=None))
        self.server_sends(Joined(ref=channel, channel=channel, access=2, head=0, resumed=None, epoch="e1"))


def test_handshake_opens_both_sides_and_negotiates_the_version() -> None:
    pair = ConnectionPair()
    pair.handshake()
    assert pair.client.state is pair.server.state is SessionState.OPEN
    assert pair.client.version == pair.server.version == 1


def test_server_picks_the_highest_common_version() -> None:
    server = Connection(Role.SERVER)
    server.receive(Hello(versions=(9, 1, 0), token=None, client={}))
    assert server.version == 1


def test_unsupported_version_is_fatal_with_its_code() -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(Hello(versions=(2, 3), token=None, client={}))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert server.state is SessionState.ERROR
    with pytest.raises(LocalProtocolError):  # sticky
        server.receive(Hello(versions=(1,), token=None, client={}))


def test_a_welcome_for_a_version_the_client_did_not_offer_is_fatal() -> None:
    client = Connection(Role.CLIENT)
    client.send(Hello(versions=(1,), token=None, client={}))
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(Welcome(version=9, session="s1", heartbeat_ms=1000, limits=LIMITS))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION and "did not offer" in info.value.message
    assert client.state is SessionState.ERROR


def test_nothing_but_hello_may_come_first() -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(encode(Ping(1)))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    assert server.state is SessionState.ERROR


def test_a_second_hello_is_unexpected() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive(Hello(versions=(1,), token=None, client={}))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME


def test_a_client_cannot_send_server_frames() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive(Joined(ref=1, channel=1, access=2, head=0, resumed=None, epoch="e1"))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(LocalProtocolError):
        ConnectionPair().client.send(Welcome(version=1, session="s", heartbeat_ms=1, limits=LIMITS))


def test_room_frames_need_an_open_channel_and_the_error_is_not_fatal() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive(Update(channel=7, ref=None, update=b"\x00\x00"))
    assert info.value.code is ErrorCode.UNKNOWN_CHANNEL
    assert pair.server.state is SessionState.OPEN
    pair.join(7)
    assert pair.client_sends(Update(channel=7, ref=None, update=b"\x00\x00"))


def test_frames_on_a_channel_the_client_left_are_stale_not_errors() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.join(1)
    pair.client.send(Leave(channel=1, ref=2))
    # The server sent this before it saw the Leave.
    assert pair.client.receive(Update(channel=1, ref=None, update=b"\x00\x00")) is STALE
    assert pair.server_sends(Update(channel=1, ref=None, update=b"\x00\x00")) == []


def test_channel_closed_by_the_server_closes_it_on_both_sides() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.join(1)
    pair.server_sends(ChannelClosed(channel=1, code=3002, message="storage"))
    assert 1 not in pair.client.channels and 1 not in pair.server.channels
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send(Update(channel=1, ref=None, update=b"\x00\x00"))
    assert info.value.code is ErrorCode.UNKNOWN_CHANNEL


def test_malformed_bytes_put_the_connection_in_error() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.server.receive_data(b"\xc1")
    assert pair.server.state is SessionState.ERROR


def test_closed_connection_refuses_everything() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.server.close()
    with pytest.raises(LocalProtocolError):
        pair.server.send(Ping(1))

