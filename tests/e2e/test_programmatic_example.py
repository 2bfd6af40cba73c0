"""The product description's programmatic provider example, run as a user would."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from tests.conftest import NodeFactory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "programmatic_provider.py"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


async def test_example_runs_and_its_skill_is_found(make_node: NodeFactory, tmp_path: Path) -> None:
    seed = await make_node()
    script = EXAMPLE.read_text()
    assert 'DHTNode("0.0.0.0", 9000)' in script and '"127.0.0.1:9100"' in script
    # Only the two addresses change, so the test cannot collide with a real node.
    script = script.replace("9000)", f"{_free_udp_port()})").replace(
        "127.0.0.1:9100", f"127.0.0.1:{seed.port}"
    )
    path = tmp_path / "provider.py"
    path.write_text(script)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == "{'text': 'HELLO'}"
        # announce() completed before the print, so the record is already in the DHT.
        assert [r.name for r in await seed.find_skills("echo")] == ["echo"]
        records = await seed.find_skills(tag="example")
        assert [r.name for r in records] == ["echo"]
        assert records[0].host == "127.0.0.1"
    finally:
        proc.terminate()
        await proc.wait()
