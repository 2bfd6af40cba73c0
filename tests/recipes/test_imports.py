"""Thrall stays light: importing it pulls in neither Textual nor the optional LLM and HTTP
libraries (those load when a backend first needs them)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import importlib, json, pkgutil, sys
import knarr.recipes
for info in pkgutil.walk_packages(knarr.recipes.__path__, "knarr.recipes."):
    importlib.import_module(info.name)
import knarr.cli.thrall
roots = {m.split(".")[0] for m in sys.modules}
print(json.dumps(sorted(roots & {"textual", "llama_cpp", "gguf", "numpy", "aiohttp"})))
"""


def test_thrall_imports_no_textual_and_no_optional_libraries() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []
