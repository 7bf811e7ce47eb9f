"""Make docs/demo.png for the README: two users of the demo page side by side, each seeing the
other's cursor, presence, chat and poll. Run by hand (not a test):

    .venv/bin/python -m tests.browser.screenshot [OUT.png]

It starts `plait serve --store memory` on a free port, drives Debian's Chromium with
Playwright, and stops the server by its pid.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from .conftest import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, start_plait_serve, stop_plait_serve

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 800, 600


def main(out: Path) -> None:
    server = start_plait_serve("--store", "memory")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            pages = []
            for name in ("Ana", "Bo"):
                context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
                context.set_default_timeout(WAIT_MS)
                page = context.new_page()
                page.add_init_script(f"localStorage.setItem('plait-demo-name', {json.dumps(name)})")
                page.goto(f"{server.base}/demo/?room=welcome")
                page.wait_for_function("document.body.dataset.ready === 'true'")
                pages.append(page)
            ana, bo = pages
            ana.click(".cm-content")
            ana.keyboard.type("Plait keeps this text in sync.\nEveryone edits at once; ")
            bo.wait_for_function("window.plait.room.doc.getText('text').toString().includes('at once')")
            bo.click(".cm-content")
            bo.keyboard.press("Control+End")
            bo.keyboard.type("nobody waits.")
            for _ in range(len("waits.")):
                bo.keyboard.press("Shift+ArrowLeft")
            ana.locator(".cm-ySelectionInfo", has_text="Bo").wait_for()
            bo.locator(".cm-ySelectionInfo", has_text="Ana").wait_for()
            ana.click("button[data-option=Pizza]")
            bo.click("button[data-option=Sushi]")
            ana.fill("#chat-input", "Lunch at one?")
            ana.press("#chat-input", "Enter")
            bo.locator("#chat-log li.msg[data-status=sent]", has_text="Lunch").wait_for()
            bo.fill("#chat-input", "Sushi, please!")
            bo.press("#chat-input", "Enter")
            for page in pages:
                page.locator("#chat-log li.msg[data-status=sent]", has_text="Sushi, please").wait_for()
                page.locator('[data-count-for="Sushi"]', has_text="1").wait_for()
            bo.click("#chat-input")  # Bo's selection stays in the editor; his caret stays drawn for Ana
            bo.wait_for_timeout(300)  # the selection highlight's fade-in (a picture, not a test)
            for page in pages:
                page.evaluate("window.scrollTo(0, 0)")
            shots = [base64.b64encode(page.screenshot()).decode() for page in pages]
            sheet = browser.new_page(viewport={"width": WIDTH * 2 + 30, "height": HEIGHT + 20})
            images = "".join(f'<img src="data:image/png;base64,{shot}">' for shot in shots)
            sheet.set_content(
                "<body style='margin:0;padding:10px;background:#cbd2dc;display:flex;gap:10px'>"
                f"<style>img{{border-radius:6px;box-shadow:0 1px 4px #0003}}</style>{images}</body>"
            )
            out.write_bytes(sheet.screenshot(type="png"))
            browser.close()
    finally:
        stop_plait_serve(server.process)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png")
