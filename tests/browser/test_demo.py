"""The demo page in real Chromium: several users (browser contexts) in one room of one `plait
serve`, over WebSocket, SSE and long-polling, offline and back, beside a Python client and a
Yjs editor. Each test has a room of its own; each wait is bounded (conftest.WAIT_MS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import WAIT_MS, Contexts, Server

pytestmark = pytest.mark.slow

INTEROP_JS = Path(__file__).resolve().parents[1] / "interop" / "js"


class Demo:
    """One tab of the demo page, as a user sees it and as the tests read it."""

    def __init__(self, page: Any) -> None:
        self.page = page

    @classmethod
    def open(cls, context: Any, server: Server, room: str, name: str) -> Demo:
        page = context.new_page()
        page.add_init_script(f"localStorage.setItem('plait-demo-name', {json.dumps(name)})")
        page.goto(f"{server.base}/demo/?room={room}")
        page.wait_for_function("document.body.dataset.ready === 'true'")
        return cls(page)

    def text(self) -> str:
        return str(self.page.evaluate("window.plait.room.doc.getText('text').toString()"))

    def wait_text(self, *parts: str) -> None:
        self.page.wait_for_function(
            "parts => { const t = window.plait.room.doc.getText('text').toString(); return parts.every(p => t.includes(p)) }",
            arg=list(parts),
        )
        editor = self.page.locator(".cm-content")
        for part in parts:  # what the editor shows, not only the document behind it
            assert part in editor.inner_text()

    def type(self, text: str) -> None:
        self.page.click(".cm-content")
        self.page.keyboard.press("Control+End")
        self.page.keyboard.type(text)

    def say(self, text: str) -> None:
        self.page.fill("#chat-input", text)
        self.page.press("#chat-input", "Enter")

    def wait_chat(self, text: str, status: str = "sent") -> None:
        self.page.locator(f"#chat-log li.msg[data-status={status}]", has_text=text).wait_for()

    def chat_events(self, text: str) -> list[Any]:
        events = self.page.evaluate("window.plait.events.filter(e => e.name === 'chat')")
        return [e for e in events if e["payload"]["text"] == text]

    def vote(self, option: str) -> None:
        self.page.click(f"button[data-option={option}]")

    def wait_counts(self, **counts: int) -> None:
        for option, count in counts.items():
            self.page.locator(f'[data-count-for="{option}"]', has_text=re.compile(f"^{count}$")).wait_for()

    def wait_transport(self, transport: str) -> None:
        self.page.locator(f'#status-transport[data-transport="{transport}"]').wait_for()
        self.page.locator('#status-state[data-state="open"]').wait_for()
        assert self.page.evaluate("window.plait.client.transport") == transport

    def wait_people(self, *names: str) -> None:
        for name in names:
            self.page.locator("#presence li.person", has_text=name).wait_for()


def room_name() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def block_websockets(context: Any) -> None:
    """Every WebSocket the page opens is closed at once, as a proxy that does not pass them."""
    context.route_web_socket(re.compile(r".*"), lambda ws: ws.close(code=1011, reason="blocked by the test"))


def block_sse(context: Any) -> None:
    """Every event stream fails, as behind a proxy that passes requests but not streams."""
    context.route(re.compile(r".*/v1/(sessions/[^/]+/)?events.*"), lambda route: route.abort())


def test_two_users_edit_together_and_see_cursor_presence_typing_and_chat(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    bo_context = contexts.new()
    bo = Demo.open(bo_context, server, room, "Bo")

    ana.type("Hello from Ana. ")
    bo.wait_text("Hello from Ana.")
    bo.type("And Bo!")
    ana.wait_text("Hello from Ana.", "And Bo!")
    assert ana.text() == bo.text()

    # Bo's cursor, labelled with his name, in Ana's editor (y-codemirror.next's caret).
    ana.page.locator(".cm-ySelectionInfo", has_text="Bo").wait_for(state="visible")

    # Presence: both, each once; Bo's second tab is one user with two sessions.
    ana.wait_people("Ana (you)", "Bo")
    Demo.open(bo_context, server, room, "Bo")
    ana.page.locator("#presence li.person", has_text="Bo").locator('.tabs[data-count="2"]').wait_for()
    assert ana.page.locator("#presence li.person").count() == 2

    # Typing: Bo types, Ana is told; it clears once he stops.
    bo.type(" typing")
    ana.page.locator("#typing", has_text="Bo is typing…").wait_for()
    ana.page.locator("#typing", has_text=re.compile("^$")).wait_for()

    # Chat: shown to Ana at once (pending, then sent) and to Bo.
    ana.say("hi Bo")
    ana.wait_chat("hi Bo")
    bo.wait_chat("hi Bo")
    assert bo.page.locator("#chat-log li.msg", has_text="hi Bo").locator(".who").inner_text() == "Ana"


def test_poll_counts_update_for_everyone_and_a_late_joiner_counts_the_history(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    bo = Demo.open(contexts.new(), server, room, "Bo")
    ana.vote("Pizza")
    bo.vote("Sushi")
    for user in (ana, bo):
        user.wait_counts(Pizza=1, Sushi=1, Salad=0)
    ana.vote("Sushi")  # a user's latest vote counts
    for user in (ana, bo):
        user.wait_counts(Pizza=0, Sushi=2)
    late = Demo.open(contexts.new(), server, room, "Cy")  # joins with since 0: the whole history
    late.wait_counts(Pizza=0, Sushi=2, Salad=0)
    late.vote("Salad")
    for user in (ana, bo, late):
        user.wait_counts(Sushi=2, Salad=1)


def _takes_part_fully(newcomer: Demo, ana: Demo, name: str) -> None:
    newcomer.wait_text("Ana was here.")
    newcomer.type(f" {name} edits.")
    ana.wait_text(f"{name} edits.")
    ana.wait_people(name)
    newcomer.wait_people("Ana")
    newcomer.say(f"{name} says hi")
    newcomer.wait_chat(f"{name} says hi")
    ana.wait_chat(f"{name} says hi")
    ana.say(f"hi {name}")
    newcomer.wait_chat(f"hi {name}")
    newcomer.vote("Tacos")
    ana.wait_counts(Tacos=1)
    ana.page.locator(".cm-ySelectionInfo", has_text=name).wait_for(state="visible")


def test_without_websockets_the_page_falls_back_to_sse_and_takes_part(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    ana.type("Ana was here.")
    context = contexts.new()
    block_websockets(context)
    sse = Demo.open(context, server, room, "Sol")
    sse.wait_transport("sse")
    ana.wait_transport("websocket")
    _takes_part_fully(sse, ana, "Sol")


def test_without_websockets_or_sse_the_page_falls_back_to_long_polling_and_takes_part(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    ana.type("Ana was here.")
    context = contexts.new()
    block_websockets(context)
    block_sse(context)
    poller = Demo.open(context, server, room, "Pol")
    poller.wait_transport("poll")
    _takes_part_fully(poller, ana, "Pol")


def test_offline_edits_and_chat_arrive_exactly_once_after_reconnecting(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    bo_context = contexts.new()
    bo = Demo.open(bo_context, server, room, "Bo")
    bo.type("online. ")
    ana.wait_text("online.")

    bo_context.set_offline(True)
    bo.page.locator('#status-state:not([data-state="open"])').wait_for()
    bo.type("offline one. ")
    bo.say("sent while offline")
    bo.wait_chat("sent while offline", status="pending")
    bo.type("offline two.")
    assert "offline one." not in ana.text()

    bo_context.set_offline(False)
    bo.wait_transport("websocket")
    ana.wait_text("online.", "offline one.", "offline two.")
    ana.wait_chat("sent while offline")
    bo.wait_chat("sent while offline")
    bo.page.wait_for_function("window.plait.room.synced")
    assert ana.text().count("offline one.") == 1 and ana.text().count("offline two.") == 1
    assert ana.text() == bo.text()
    assert len(ana.chat_events("sent while offline")) == 1
    assert len(bo.chat_events("sent while offline")) == 1
    assert ana.page.locator("#chat-log li.msg", has_text="sent while offline").count() == 1


PYTHON_CLIENT = """
import json, sys, trio
from plait.client import connect

def names(room):
    return sorted(str(e.state.get("user", {}).get("name") or e.state.get("name"))
                  for entries in room.users().values() for e in entries)

async def main(url, room_name):
    async with connect(url) as client, client.join(room_name) as room:
        await room.synced()
        changes, events = room.changes(), room.events()
        await room.set_presence({"user": {"name": "Py", "color": "#ee6352"}})
        room.text.insert(len(str(room.text).encode()), " from python.")
        await room.flushed()
        with trio.fail_after(60):
            while len(names(room)) < 2:  # the browser and the Yjs editor (its own session is left out)
                await changes.__anext__()
            seen = names(room)
            async for event in events:
                if event.name == "done":
                    break
        print(json.dumps({"text": str(room.text), "names": seen}))

trio.run(main, sys.argv[1], sys.argv[2])
"""


def test_a_browser_a_python_client_and_a_yjs_editor_share_the_document_and_presence(server: Server, contexts: Contexts) -> None:
    assert (INTEROP_JS / "node_modules" / "y-websocket").is_dir(), "run (cd tests/interop/js && npm ci) first"
    room = room_name()
    browser = Demo.open(contexts.new(), server, room, "Web")
    browser.type("from browser.")
    browser.page.evaluate("window.plait.room.flushed()")  # the others join after it, and add after it
    python = subprocess.Popen([sys.executable, "-c", PYTHON_CLIENT, f"ws://127.0.0.1:{server.port}/", room],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yjs_config = {"url": f"ws://127.0.0.1:{server.port}/yjs", "room": room, "name": "Yjs", "insert": " from yjs.",
                  "expectLength": len("from browser. from python. from yjs."), "holdMs": 10_000, "timeoutMs": WAIT_MS * 2}
    yjs = subprocess.Popen(["node", str(INTEROP_JS / "yclients.mjs"), json.dumps(yjs_config)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The Yjs client inserts in the middle of the text (yclients.mjs), as one piece.
        browser.page.wait_for_function(
            """() => { const t = window.plait.room.doc.getText('text').toString();
                       const rest = t.replace(' from yjs.', '');
                       return rest !== t && rest.includes('from browser.') && rest.includes(' from python.') }"""
        )
        browser.wait_people("Web (you)", "Py", "Yjs")
        yjs_out, yjs_err = yjs.communicate(timeout=60)  # it reports whom it saw after holdMs
        browser.page.evaluate("window.plait.room.publish('done', null)")
        python_out, python_err = python.communicate(timeout=60)
    finally:
        for process in (python, yjs):
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert python.returncode == 0, python_err
    assert yjs.returncode == 0, yjs_out + yjs_err
    seen_by_python = json.loads(python_out.strip().splitlines()[-1])
    seen_by_yjs = json.loads(yjs_out.strip().splitlines()[-1])["clients"][0]
    assert seen_by_python["text"] == seen_by_yjs["text"] == browser.text()
    assert set(seen_by_python["names"]) == {"Web", "Yjs"}
    assert {"Web", "Py"} <= {str((state.get("user") or {}).get("name") or state.get("name")) for state in seen_by_yjs["others"]}


def test_a_failed_message_is_marked_and_its_retry_reuses_the_idempotency_key(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    bo = Demo.open(contexts.new(), server, room, "Bo")
    # The first publish is refused as the SDK would refuse it after its own retries; the keys
    # of every publish are kept to compare.
    ana.page.evaluate(
        """() => {
             const room = window.plait.room, real = room.publish.bind(room);
             window.keys = []; let refuse = true;
             room.publish = (name, payload, options) => {
               window.keys.push(options && options.key);
               if (refuse) {
                 refuse = false;
                 const error = Object.assign(new Error('RATE_LIMITED (2004): too many events'), { codeName: 'RATE_LIMITED' });
                 return Promise.reject(error);
               }
               return real(name, payload, options);
             };
           }"""
    )
    ana.say("second time lucky")
    failed = ana.page.locator("#chat-log li.msg[data-status=failed]", has_text="second time lucky")
    failed.wait_for()
    assert "RATE_LIMITED" in failed.inner_text()
    failed.get_by_role("button", name="Retry").click()
    ana.wait_chat("second time lucky")
    bo.wait_chat("second time lucky")
    keys = ana.page.evaluate("window.keys")
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert len(bo.chat_events("second time lucky")) == 1


def test_the_page_fits_a_375_pixel_screen_and_labels_its_controls(server: Server, contexts: Contexts) -> None:
    phone = Demo.open(contexts.new(viewport={"width": 375, "height": 700}), server, room_name(), "Ana")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 375
    for control in ("#name", "#chat-input"):
        label = phone.page.evaluate(f"document.querySelector('{control}').labels[0].textContent")
        assert label.strip()
    for live in ("#status", "#chat-log", "#typing"):
        assert phone.page.get_attribute(live, "aria-live") == "polite"
    assert phone.page.get_attribute(".cm-content", "aria-label") == "Shared document"
    phone.type("small screen")
    phone.say("from a phone")
    phone.wait_chat("from a phone")
    assert phone.page.locator("#chat-input").bounding_box()["x"] >= 0
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 375


def test_a_member_whose_access_is_lowered_to_read_cannot_type_until_it_is_given_back(contexts: Contexts) -> None:
    import urllib.request

    from .conftest import start_plait_serve, stop_plait_serve

    key = "operator-key-of-the-test-0123456789"
    served = start_plait_serve("--store", "memory", "--api-key", key)
    try:
        room = room_name()
        ana = Demo.open(contexts.new(), served, room, "Ana")
        bo = Demo.open(contexts.new(), served, room, "Bo")
        ana.type("Ana's text.")
        bo.wait_text("Ana's text.")
        user = bo.page.evaluate(
            "window.plait.room.presence().find(e => e.session === window.plait.client.session).identity.id"
        )

        def set_access(access: str) -> None:
            request = urllib.request.Request(
                f"{served.base}/api/rooms/{room}/access/{user}", method="PUT",
                data=json.dumps({"access": access}).encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200

        set_access("read")
        bo.page.wait_for_function("document.querySelector('.cm-content').contentEditable === 'false'")
        bo.type(" Bo was not allowed.")
        assert "not allowed" not in bo.text()  # the editor took nothing: no edit stays in his tab only
        set_access("write")
        bo.page.wait_for_function("document.querySelector('.cm-content').contentEditable === 'true'")
        bo.type(" Bo may again.")
        ana.wait_text("Ana's text.", "Bo may again.")
        assert "not allowed" not in ana.text()
    finally:
        stop_plait_serve(served.process)
