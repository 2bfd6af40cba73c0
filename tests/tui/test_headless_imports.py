"""The headless node, Thrall and watchman never import Textual (nor do the console's
feed and model, so tools can read a cockpit without it)."""

from __future__ import annotations

import json
import subprocess
import sys

HEADLESS = ("knarr", "knarr.node", "knarr.recipes", "knarr.watchman", "knarr.cli.main",
            "knarr.cli.console", "knarr.tui.feed", "knarr.tui.model")

PROBE = """
import importlib, json, pkgutil, sys
roots = json.loads(sys.argv[1])
imported = []
for root in roots:
    module = importlib.import_module(root)
    imported.append(root)
    if root in ("knarr.node", "knarr.recipes", "knarr.watchman"):
        for info in pkgutil.walk_packages(module.__path__, root + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
print(json.dumps({"imported": imported,
                  "textual": sorted(m for m in sys.modules if m.split(".")[0] == "textual")}))
"""


def test_headless_modules_do_not_import_textual() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEADLESS)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    result = json.loads(out.stdout)
    assert "knarr.node.node" in result["imported"]
    assert "knarr.node.cockpit" in result["imported"]
    assert result["textual"] == []
