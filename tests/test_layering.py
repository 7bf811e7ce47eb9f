"""Layering rule (style §1): protocol/ imports nothing of ours and never trio."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        ours = name.startswith(('plait.engine', 'plait.storage', 'plait.client'))
        if name.split('.')[0] in {'trio', 'trio_websocket'} or ours:
            raise ImportError('protocol/ must not import ' + name)
sys.meta_path.insert(0, Blocked())
import plait.protocol
print('ok')
"""


def test_protocol_imports_without_trio_or_other_plait_packages() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
