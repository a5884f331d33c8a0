"""The LangGraph integration is an optional extra: the core package never imports it."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_imports_no_framework() -> None:
    code = (
        "import sys, demiarch_store, demiarch_store.cli\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('langgraph', 'langchain_core', 'langsmith'))\n"
        "print(loaded)\n"
        "import demiarch_store.integrations.langgraph\n"
        "print('langgraph' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out == ["[]", "True"]  # and the check can fail: importing the integration loads it
