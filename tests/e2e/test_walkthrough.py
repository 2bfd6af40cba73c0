"""The product's walkthroughs on loopback, as a new user runs them: init, serve, query,
request, and every kind of bad input, each in its own process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cli import ENV, KNARR, free_port, knarr, read_banner

pytestmark = pytest.mark.slow


EXTRA_SKILLS = """
[skills.fails]
handler = "skills/extra.py:fails"
description = "Always raises"

[skills.hangs]
handler = "skills/extra.py:hangs"
description = "Never finishes"

[skills.partners-only]
handler = "skills/extra.py:fails"
visibility = "whitelist"
allowed_nodes = ["{allowed}"]

[skills.hidden]
handler = "skills/extra.py:fails"
visibility = "private"

[skills.tiny]
handler = "skills/extra.py:echo"
input_schema = {{text = "string"}}
max_input_size = 64
"""

EXTRA_CODE = """
import asyncio


async def fails(input_data: dict) -> dict:
    raise ValueError("the model is not loaded")


async def hangs(input_data: dict) -> dict:
    await asyncio.Event().wait()
    return {}


async def echo(input_data: dict) -> dict:
    return input_data
"""


@dataclass
class Provider:
    port: int
    node_id: str
    folder: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    root = tmp_path_factory.mktemp("walkthrough")
    port = free_port()
    created = knarr("init", "my-provider", "--port", str(port),
                    "--bootstrap", f"127.0.0.1:{port}", cwd=root)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[0] == "Created project in my-provider/"
    assert "knarr.toml" in created.stdout and "skills/echo.py" in created.stdout
    assert "knarr serve" in created.stdout
    folder = root / "my-provider"
    (folder / "skills" / "extra.py").write_text(EXTRA_CODE)
    with (folder / "knarr.toml").open("a") as f:
        f.write(EXTRA_SKILLS.format(allowed="ab" * 32))
    text = (folder / "knarr.toml").read_text().replace(
        "max_task_timeout = 3600", "max_task_timeout = 1"
    )
    (folder / "knarr.toml").write_text(text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"'))

    proc = subprocess.Popen(
        [*KNARR, "serve"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=ENV,
    )
    banner = read_banner(proc)
    assert banner, proc.stderr.read() if proc.stderr else ""
    node_id = banner[0].removeprefix("Node ID: ")
    assert banner[1] == f"Listening: 127.0.0.1:{port}"
    assert "Serving skill: echo (public)" in banner
    assert "Serving skill: hidden (local only)" in banner
    try:
        yield Provider(port, node_id, folder)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_query_by_name_prints_the_table(provider: Provider) -> None:
    out = knarr("query", "--bootstrap", provider.bootstrap, "--name", "echo")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["SKILL", "PROVIDER", "HOST", "DESCRIPTION"]
    assert row.split()[:3] == [
        "echo", provider.node_id[:16] + "...", f"127.0.0.1:{provider.port}"
    ]
    assert row.endswith("Echoes input text back")


def test_query_by_tag_as_json(provider: Provider) -> None:
    out = knarr("query", "--bootstrap", provider.bootstrap, "--tag", "example", "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [(r["name"], r["provider"]) for r in records] == [("echo", provider.node_id)]
    assert records[0]["input_schema"] == {"text": "string"}


def test_private_skills_are_not_found(provider: Provider) -> None:
    out = knarr("query", "--bootstrap", provider.bootstrap, "--name", "hidden")
    assert out.returncode == 1
    assert out.stderr.strip() == "No providers found for skill 'hidden'."


def test_request_completes(provider: Provider) -> None:
    out = knarr("request", "--skill", "echo", "--input", '{"text": "hello"}',
                "--bootstrap", provider.bootstrap)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Status: completed", "Output:", "  text: hello"]


def test_request_json_output(provider: Provider) -> None:
    out = knarr("request", "--skill", "echo", "--input", '{"text": "hi"}', "--json",
                "--bootstrap", provider.bootstrap)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"status": "completed", "skill": "echo", "provider": provider.node_id,
                      "output": {"text": "hi"}, "downloaded": {}}


@pytest.mark.parametrize(
    ("skill", "data", "expected"),
    [
        ("fails", "{}", "ValueError: the model is not loaded"),
        ("hangs", "{}", "ran past its 1 s limit"),
        ("partners-only", "{}", "may not call 'partners-only'"),
        ("tiny", json.dumps({"text": "x" * 500}), "over the limit of 64 bytes"),
        ("tiny", '{"text": 5}', "input field 'text' must be string"),
        ("nobody-serves-this", "{}", "no provider serves 'nobody-serves-this'"),
    ],
    ids=["handler-raises", "handler-timeout", "refused-caller", "too-large", "schema",
         "unserved"],
)
def test_request_failures_are_clear(
    provider: Provider, skill: str, data: str, expected: str
) -> None:
    out = knarr("request", "--skill", skill, "--input", data, "--bootstrap", provider.bootstrap)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "Status: failed"
    assert len(lines) == 2 and lines[1].startswith("Error: ") and expected in lines[1], lines
    assert "Traceback" not in out.stderr
    # ... and the provider keeps serving.
    again = knarr("request", "--skill", "echo", "--input", '{"text": "still here"}',
                  "--bootstrap", provider.bootstrap)
    assert again.stdout.splitlines()[-1] == "  text: still here"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "{not json"], "error: --input is not valid JSON"),
        (["--input", "[1, 2]"], "error: --input must be a JSON object"),
        (["--input", "{}", "--bootstrap", "nonsense"], "error: --bootstrap"),
    ],
    ids=["invalid-json", "not-an-object", "bad-bootstrap"],
)
def test_bad_arguments_are_one_line(provider: Provider, args: list[str], expected: str) -> None:
    full = ["request", "--skill", "echo", "--bootstrap", provider.bootstrap, *args]
    out = knarr(*full)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_unreachable_bootstrap_fails_clearly(tmp_path: Path) -> None:
    dead = free_port()
    out = knarr("query", "--bootstrap", f"127.0.0.1:{dead}", "--name", "echo")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: none of 1 bootstrap peers answered (127.0.0.1:{dead})"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["init", ""], "error: the project folder name is empty"),
        (["init", "/proc/knarr-project"], "error: cannot create the project in /proc/"),
        (["query", "--name", "x", "--bootstrap", "127.0.0.1:1", "--log-level", "loud"],
         "error: --log-level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (["demo", "--seconds", "-1", "--no-console"],
         "error: --seconds: expected 0 (until Ctrl-C) or more, got -1"),
    ],
    ids=["init-empty", "init-unwritable", "log-level", "demo-seconds"],
)
def test_bad_command_lines_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    out = knarr(*args, cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_timeout_covers_joining(tmp_path: Path) -> None:
    """A join that would take longer (the pings' retries) ends at --timeout."""
    dead = free_port()
    out = knarr("query", "--bootstrap", f"127.0.0.1:{dead}", "--name", "echo",
                "--timeout", "0.2")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: no bootstrap peer answered within 0.2 s"


def test_init_refuses_to_overwrite(provider: Provider) -> None:
    out = knarr("init", str(provider.folder))
    assert out.returncode == 1
    assert "already exists; not overwriting" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_reports_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "knarr.toml").write_text(
        '[skills.echo]\nhandler = "skills/missing.py:handle"\n'
    )
    out = knarr("serve", "--bootstrap", "", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: knarr.toml: skills.echo.handler: handler file not found")


def test_cold_request_process_runs_quickly(provider: Provider) -> None:
    import time

    start = time.perf_counter()
    out = knarr("request", "--skill", "echo", "--input", '{"text": "cold"}',
                "--bootstrap", provider.bootstrap)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0
    # Not a performance assertion (see benchmarks/tasks.py): a sanity bound that catches
    # a request waiting out a timeout somewhere.
    assert elapsed < 10, elapsed


def test_concurrent_cli_requests(provider: Provider) -> None:
    async def one(i: int) -> str:
        proc = await asyncio.create_subprocess_exec(
            *KNARR, "request", "--skill", "echo", "--input", json.dumps({"text": f"n{i}"}),
            "--bootstrap", provider.bootstrap, stdout=asyncio.subprocess.PIPE, env=ENV,
        )
        out, _ = await proc.communicate()
        return out.decode().splitlines()[-1]

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(main()) == [f"  text: n{i}" for i in range(8)]
