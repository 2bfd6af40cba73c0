"""``knarr info`` and ``knarr demand`` end to end: a priced ``knarr serve`` in its own
process is called and asked for what nobody serves by ``knarr request`` and
``knarr query`` processes, and its books are read beside it while it runs, and after
it has stopped."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cli import ENV, KNARR, free_port, knarr, read_banner

pytestmark = pytest.mark.slow

PRICE = 2.5
CALLS = 3


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    node_id: str
    folder: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def db(self) -> str:
        return str(self.folder / "node.db")

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: the node finishes cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=30)
            assert self.proc.returncode == 0, err
            assert "Traceback" not in err


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KNARR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A priced node, called CALLS times and asked twice for a skill and once for a
    tag that nobody serves."""
    root = tmp_path_factory.mktemp("books")
    port = free_port()
    made = knarr("init", "node", "--port", str(port), "--bootstrap", f"127.0.0.1:{port}",
                 cwd=root)
    assert made.returncode == 0, made.stderr
    folder = root / "node"
    config = folder / "knarr.toml"
    text = config.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
    config.write_text(text + f"price = {PRICE}\n")  # the last table is [skills.echo]
    proc = subprocess.Popen(
        [*KNARR, "serve", "--log-level", "WARNING"], cwd=folder, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=ENV,
    )
    banner = read_banner(proc)
    assert banner and banner[0].startswith("Node ID: "), proc.stderr.read() if proc.stderr else ""
    node = Served(proc, port, banner[0].removeprefix("Node ID: "), folder)
    try:
        asks = [
            *(_spawn("request", "--skill", "echo", "--input", f'{{"text": "call {i}"}}',
                     "--bootstrap", node.bootstrap) for i in range(CALLS)),
            *(_spawn("request", "--skill", "nobody-has-this", "--input", "{}",
                     "--bootstrap", node.bootstrap) for _ in range(2)),
            _spawn("query", "--tag", "nothing-here", "--bootstrap", node.bootstrap),
        ]
        results = [_finish(p) for p in asks]
        for i, (code, out, err) in enumerate(results[:CALLS]):
            assert code == 0, err
            assert out.splitlines()[-1] == f"  text: call {i}"
        for code, out, _ in results[CALLS:CALLS + 2]:
            assert code == 1 and "no provider serves 'nobody-has-this'" in out
        assert results[-1][0] == 1
        assert results[-1][2].strip() == "No providers found for tag 'nothing-here'."
        yield node
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _check_info(node: Served, out: str, calls: int) -> None:
    lines = out.splitlines()
    assert lines[0] == f"Node ID:     {node.node_id}"
    assert lines[2].startswith(f"Database:    {node.db} (schema ")
    assert lines[4] == "Skills:      echo"
    total = PRICE * calls
    assert lines[5] == (
        f"Ledger:      earned {total:g}, spent 0, settled +0, outstanding +{total:g} credits"
    )
    assert lines[7].split() == ["PEER", "BALANCE", "TASKS"]
    rows = [line.split() for line in lines[8:8 + calls]]
    assert all(r[0].endswith("...") and r[1:] == [f"+{PRICE:g}", "1"] for r in rows), rows
    assert lines[8 + calls].startswith("(positive: the peer owes this node")
    assert len(lines) == 9 + calls


def _check_info_json(node: Served, out: str, calls: int) -> None:
    data = json.loads(out)
    assert data["node_id"] == node.node_id and data["announced_skills"] == ["echo"]
    ledger = data["ledger"]
    assert ledger["earned"] == ledger["outstanding"] == PRICE * calls
    assert ledger["spent"] == ledger["settled"] == 0
    assert ledger["unbalanced_transactions"] == 0
    assert [(b["balance"], b["tasks"]) for b in ledger["balances"]] == [(PRICE, 1)] * calls
    assert data["reputation"] == []  # it called nobody


def _check_demand(node: Served, out: str, calls: int) -> None:
    header, first, second, *rest = out.splitlines()
    assert header.split() == ["KIND", "NAME", "COUNT", "FIRST", "SEEN", "LAST", "SEEN"]
    assert first.split()[:3] == ["skill", "nobody-has-this", "2"]  # most asked first
    assert second.split()[:3] == ["tag", "nothing-here", "1"]
    assert rest == []  # a served skill is never demand


def _check_demand_json(node: Served, out: str, calls: int) -> None:
    rows = json.loads(out)
    assert [(r["kind"], r["name"], r["count"]) for r in rows] == [
        ("skill", "nobody-has-this", 2), ("tag", "nothing-here", 1)]
    assert all(r["first_seen"] <= r["last_seen"] for r in rows)


def _read_books(node: Served, calls: int) -> None:
    """``info``, ``info --reputation --json``, ``demand`` and ``demand --json`` at once,
    each in its own process."""
    reads = {
        _check_info: _spawn("info", "--storage", node.db),
        _check_info_json: _spawn("info", "--storage", node.db, "--reputation", "--json"),
        _check_demand: _spawn("demand", "--storage", node.db),
        _check_demand_json: _spawn("demand", "--storage", node.db, "--json"),
    }
    for check, proc in reads.items():
        code, out, err = _finish(proc)
        assert code == 0 and err == "", err
        check(node, out, calls)


def test_books_are_read_beside_the_running_node(served: Served) -> None:
    _read_books(served, CALLS)
    # The reads did not hold the node up: a request right after completes ...
    after = knarr("request", "--skill", "echo", "--input", '{"text": "after"}', "--json",
                  "--bootstrap", served.bootstrap)
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout)["output"] == {"text": "after"}
    # ... and so does one that runs while the books are read.
    call = _spawn("request", "--skill", "echo", "--input", '{"text": "meanwhile"}',
                  "--bootstrap", served.bootstrap)
    code, out, err = _finish(_spawn("info", "--storage", served.db, "--json"))
    assert code == 0, err
    assert json.loads(out)["ledger"]["earned"] in (PRICE * (CALLS + 1), PRICE * (CALLS + 2))
    code, out, err = _finish(call)
    assert code == 0, out + err
    assert out.splitlines()[-1] == "  text: meanwhile"


def test_books_are_read_after_the_node_stopped(served: Served) -> None:
    served.stop()
    _read_books(served, CALLS + 2)


@pytest.mark.parametrize("command", ["info", "demand"])
def test_a_missing_database_is_one_clear_line(tmp_path: Path, command: str) -> None:
    out = knarr(command, "--storage", "missing.db", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "error: missing.db: no node database here (start a node with `knarr serve`, or pass"
        " --storage)"
    ]
    assert not (tmp_path / "missing.db").exists()  # reading never creates one


def test_a_file_that_is_not_a_node_database_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not sqlite at all " * 100)
    out = knarr("info", "--storage", "notes.db", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: notes.db: "), out.stderr
    assert "Traceback" not in out.stderr
