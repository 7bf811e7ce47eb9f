"""The durable-ack load both storage benches use: one native client that keeps WINDOW
one-character document updates in flight and counts the acks (each ack = durably stored)."""

from __future__ import annotations

from typing import Any

import pycrdt
import trio

from plait.protocol import Ack, Hello, Join, Update, Welcome, decode, encode

WINDOW = 16


async def write_until(transport: Any, room: str, client_id: int, count_from: float, stop_at: float, counts: list[int]) -> None:
    """Drive `transport` (anything with send_message/receive_message) until `stop_at`,
    adding the acks received after `count_from` to counts[0]."""
    await transport.send_message(encode(Hello((1,), None, {})))
    while not any(isinstance(f, Welcome) for f in decode(await transport.receive_message())):
        pass
    await transport.send_message(encode(Join(1, room, None, None)))
    doc = pycrdt.Doc(client_id=client_id)
    text = doc.get("text", type=pycrdt.Text)
    in_flight, ref = 0, 1
    while trio.current_time() < stop_at:
        batch = []
        while in_flight < WINDOW:
            before = doc.get_state()
            text.insert(len(text), "x")
            ref += 1
            batch.append(Update(1, ref, doc.get_update(before)))
            in_flight += 1
        if batch:
            await transport.send_message(encode(batch))
        acked = sum(isinstance(f, Ack) for f in decode(await transport.receive_message()))
        in_flight -= acked
        if trio.current_time() >= count_from:
            counts[0] += acked
    await transport.aclose()
