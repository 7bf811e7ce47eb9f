"""Writes spec/openapi.json from the server API's routes (plait.engine._api.ENDPOINTS).

    python spec/make_openapi.py

tests/e2e/test_server_api.py fails while the committed file and the code disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from plait.engine._api import openapi

if __name__ == "__main__":
    path = Path(__file__).with_name("openapi.json")
    path.write_text(json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
