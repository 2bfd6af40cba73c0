"""``knarr console``: where it attaches by default, and one clear line when it cannot."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

import pytest

from knarr.cli.console import make_feed, project_folder
from knarr.cli.main import build_parser, main
from knarr.tui.feed import CockpitFeed, RecordedFeed
from tests.conftest import NodeFactory


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["console", *argv])


def one_error_line(captured: str) -> str:
    lines = captured.strip().splitlines()
    assert len(lines) == 1, captured
    assert lines[0].startswith("error: ")
    return lines[0]


def test_no_node_here_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["console"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no node is running here" in line and "knarr serve" in line


def test_a_stale_socket_is_one_clear_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cockpit.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a socket file nobody listens on, as a crashed node leaves
    assert main(["console", "--data-dir", str(tmp_path)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no cockpit answers" in line and "is the node running" in line


def test_cockpit_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["console", "--cockpit", "127.0.0.1:9"]) == 1
    assert "--cockpit needs --token" in one_error_line(capsys.readouterr().err)


async def test_a_wrong_token_is_refused_in_one_line(
    tmp_path: Path, make_node: NodeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    node = await make_node(cockpit_dir=tmp_path, cockpit_port=0)
    assert node.cockpit is not None
    where = f"127.0.0.1:{node.cockpit.port}"
    code = await asyncio.to_thread(main, ["console", "--cockpit", where, "--token", "nope"])
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "refused the token" in line and "cockpit.token" in line


def test_default_is_the_project_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert project_folder(None) == tmp_path
    (tmp_path / "knarr.toml").write_text('[node]\nstorage = "state/node.db"\n')
    assert project_folder(None) == tmp_path / "state"
    assert project_folder(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cockpit.sock").touch()
    feed = make_feed(parse())
    assert isinstance(feed, CockpitFeed)
    assert feed.socket_path == tmp_path / "state" / "cockpit.sock"


def test_token_file_is_used_for_tcp(tmp_path: Path) -> None:
    (tmp_path / "cockpit.token").write_text("s3cret\n")
    feed = make_feed(parse("--cockpit", "127.0.0.1:7000", "--data-dir", str(tmp_path)))
    assert isinstance(feed, CockpitFeed) and feed.token == "s3cret" and feed.port == 7000


def test_demo_plays_the_bundled_recording() -> None:
    feed = make_feed(parse("--demo"))
    assert isinstance(feed, RecordedFeed) and feed.pace > 0 and feed.items
