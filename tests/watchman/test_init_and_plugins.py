"""``init`` (a production node folder from a local wheel) and ``plugin`` (installs into the
node's environment from local wheels; a failing one leaves the running node as it was)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nacl.signing
import pytest

from knarr.config import load_config
from knarr.node.identity import Identity
from knarr.node.store import Store
from knarr.watchman.config import load_watchman_config
from knarr.watchman.errors import VaultError
from knarr.watchman.installs import Installs
from knarr.watchman.plugins import load_plugins
from knarr.watchman.vault import Vault, base58
from tests.watchman.conftest import ENV, Watchman, health, run_cli, state, wait_until
from tests.watchman.wheels import knarr_wheel, write_wheel

pytestmark = pytest.mark.slow

PASSPHRASE = "correct horse battery staple"
Start = Callable[[Path], Awaitable[Watchman]]


@pytest.fixture
def fresh_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="wi-", dir="/tmp")) / "node"
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


async def test_init_makes_a_node_folder_and_refuses_to_overwrite_it(
    tmp_path: Path, fresh_dir: Path
) -> None:
    wheel = knarr_wheel(tmp_path / "wheels", "0.1.0")
    env = {**ENV, "KNARR_VAULT_PASSPHRASE": PASSPHRASE}
    code, out, err = await run_cli("init", "--data-dir", str(fresh_dir), "--wheel", str(wheel),
                                   "--no-thrall", "--github-token", "t0ken", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Python: {sys.executable}"
    assert lines[1:4] == ["Creating virtual environment...", "Installed knarr 0.1.0",
                          "Checking identity..."]
    block = lines[lines.index("=" * 60):]
    fields = dict(ln.split(": ", 1) for ln in block if ": " in ln)
    assert block[1] == "Node initialized successfully!" and block[-1] == "=" * 60
    assert fields["Version"] == "0.1.0" and fields["Data dir"] == str(fresh_dir)
    assert "WARNING: Back up node.db and vault.db — these contain your" in block
    assert f"knarr-watchman --data-dir {fresh_dir} run" in block

    store = Store(fresh_dir / "node.db")
    try:
        assert Identity.load_or_create(store).node_id_hex == fields["Node ID"]
    finally:
        store.close()
    vault = Vault.open(fresh_dir / "vault.db", PASSPHRASE)
    try:
        seed = vault.get("wallet_signing_key")
    finally:
        vault.close()
    wallet = nacl.signing.SigningKey(seed)
    assert base58(bytes(wallet.verify_key)) == fields["Wallet"]
    raw = (fresh_dir / "vault.db").read_bytes()
    assert seed not in raw and PASSPHRASE.encode() not in raw
    with pytest.raises(VaultError, match="wrong passphrase"):
        Vault.open(fresh_dir / "vault.db", "not the passphrase")
    assert (fresh_dir / "watchman" / "github.token").stat().st_mode & 0o077 == 0

    config = load_watchman_config(fresh_dir / "watchman.toml")
    assert config.data_dir == fresh_dir and config.node.command == "knarr"
    assert load_config(fresh_dir / "knarr.toml").thrall.enabled is False
    assert load_plugins(fresh_dir / "watchman" / "plugins.toml") == {}
    assert Installs(fresh_dir).state().current == "0.1.0"
    assert (fresh_dir / "venvs" / "knarr-0.1.0" / "bin" / "knarr").is_file()

    code, out, err = await run_cli("init", "--data-dir", str(fresh_dir), "--wheel", str(wheel),
                                   env=env)
    assert code == 1 and err.count("\n") == 1 and "already holds a node identity" in err
    assert "--force" in err

    code, out, err = await run_cli("init", "--data-dir", str(fresh_dir), "--wheel", str(wheel),
                                   "--force", "--enable-thrall", env=env)
    assert code == 0, err
    again = dict(ln.split(": ", 1) for ln in out.splitlines() if ": " in ln)
    assert again["Node ID"] != fields["Node ID"] and again["Wallet"] == fields["Wallet"]
    assert "Keeping the existing watchman.toml" in out
    assert "Keeping the existing knarr.toml" in out  # operator edits survive --force


async def test_init_without_a_passphrase_or_with_a_bad_wheel_is_one_line(
    tmp_path: Path, fresh_dir: Path
) -> None:
    env = {k: v for k, v in ENV.items() if k != "KNARR_VAULT_PASSPHRASE"}
    wheel = knarr_wheel(tmp_path, "0.1.0")
    code, _, err = await run_cli("init", "--data-dir", str(fresh_dir), "--wheel", str(wheel),
                                 env=env)
    assert code == 1 and err.count("\n") == 1 and "KNARR_VAULT_PASSPHRASE" in err, err
    bad = tmp_path / "bad" / "knarr-0.1.0-py3-none-any.whl"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    code, _, err = await run_cli("init", "--data-dir", str(fresh_dir), "--wheel", str(bad),
                                 env={**env, "KNARR_VAULT_PASSPHRASE": PASSPHRASE})
    assert code == 1 and err.count("\n") == 1 and "is corrupt" in err, err
    assert not (fresh_dir / "node.db").exists()


def _dists(venv: Path) -> set[str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {p.name for p in site.glob("*.dist-info")}


async def test_plugins_install_into_the_node_environment(
    tmp_path: Path, data_dir: Path, watchmen: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNARR_WATCHMAN_DEPS_FROM", ENV["KNARR_WATCHMAN_DEPS_FROM"])
    installs = Installs(data_dir)
    venv = await installs.install("0.1.0", knarr_wheel(tmp_path / "k", "0.1.0"))
    installs.activate("0.1.0", verify=False)
    hello = write_wheel(tmp_path / "p", "knarr_hello", "1.2.0",
                        {"knarr_hello/__init__.py": b"GREETING = 'hello'\n"})
    broken = write_wheel(tmp_path / "p", "knarr_broken", "1.0.0",
                         {"knarr_broken/__init__.py": b""}, requires_python=">=9")
    (data_dir / "watchman").mkdir(exist_ok=True)
    manifest = data_dir / "watchman" / "plugins.toml"
    manifest.write_text(f"""# our plugins
[plugins.hello]
source = "{hello}"
version = ">=1.0"
enabled = true  # keep this comment

[plugins.broken]
source = "{broken}"
enabled = false

[plugins.too-new]
source = "{hello}"
version = ">=2"
""")
    from tests.watchman.conftest import NODE_ARGS, watchman_toml

    config = str(watchman_toml(data_dir, command="knarr",
                               args=[*NODE_ARGS[2:], "--data-dir", str(data_dir)]))
    w = await watchmen(Path(config))
    await wait_until(lambda: state(data_dir).get("health") == "healthy")
    pid = state(data_dir)["node_pid"]

    code, out, err = await run_cli("--config", config, "plugin", "list")
    assert code == 0, err
    rows = [ln.split() for ln in out.splitlines()]
    assert rows[0] == ["NAME", "SOURCE", "VERSION", "ENABLED", "INSTALLED"]
    assert rows[1] == ["hello", str(hello), ">=1.0", "yes", "-"]

    code, out, err = await run_cli("--config", config, "plugin", "install", "hello")
    assert code == 0 and "Installed plugin hello 1.2.0" in out, err
    check = await _python(venv, "import knarr_hello; print(knarr_hello.GREETING)")
    assert check == "hello"

    before = _dists(venv)
    code, out, err = await run_cli("--config", config, "plugin", "install", "broken")
    assert code == 1 and err.count("\n") == 1 and "pip install" in err, err
    code, out, err = await run_cli("--config", config, "plugin", "install", "too-new")
    assert code == 1 and err.count("\n") == 1 and "does not match '>=2'" in err, err
    code, out, err = await run_cli("--config", config, "plugin", "install", "nope")
    assert code == 1 and "no plugin named 'nope'" in err
    assert _dists(venv) == before
    assert state(data_dir)["node_pid"] == pid and (await health(data_dir) or {})["status"] == "ok"

    code, out, err = await run_cli("--config", config, "plugin", "disable", "hello")
    assert code == 0, err
    text = manifest.read_text()
    assert "enabled = false  # keep this comment" in text and text.startswith("# our plugins")
    code, out, err = await run_cli("--config", config, "plugin", "sync")
    assert code == 1  # too-new is enabled and cannot be satisfied: reported, others go on
    assert "Removed disabled plugin hello 1.2.0" in out and "error: plugin too-new" in out
    assert "knarr_hello-1.2.0.dist-info" not in _dists(venv)
    code, out, err = await run_cli("--config", config, "plugin", "enable", "hello")
    assert code == 0
    code, out, err = await run_cli("--config", config, "plugin", "sync")
    assert "Installed plugin hello 1.2.0" in out
    assert await _python(venv, "import knarr_hello; print(knarr_hello.GREETING)") == "hello"
    assert state(data_dir)["node_pid"] == pid and w.proc is not None


async def _python(venv: Path, code: str) -> str:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "python"), "-c", code, cwd=venv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                             if k != "PYTHONPATH"})
    out, err = await proc.communicate()
    return (out or err).decode().strip()


def test_plugin_manifest_errors_name_the_key(tmp_path: Path) -> None:
    from knarr.errors import ConfigError
    from knarr.watchman.plugins import load_plugins

    path = tmp_path / "plugins.toml"
    for text, message in (
        ("[plugins.x]\n", "plugins.x.source: missing"),
        ('[plugins.x]\nsource = "github:a"\n', 'plugins.x.source: expected "github:owner/repo"'),
        ('[plugins.x]\nsource = "github:a/b"\nversion = "=>1"\n',
         "plugins.x.version: not a version specifier"),
        ('[plugins.x]\nsource = "github:a/b"\nenabled = "yes"\n',
         "plugins.x.enabled: expected true or false"),
        ('[plugins.x]\nsource = "github:a/b"\nsorce = 1\n', "plugins.x.sorce: unknown key"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_plugins(path)
        assert str(info.value).startswith(f"{path}: {message}"), info.value
    path.write_text('[plugins.bcw]\nsource = "github:knarrnet/knarr-bcw"\nversion = ">=1.0.0"\n')
    plugin = load_plugins(path)["bcw"]
    assert (plugin.package, plugin.enabled) == ("knarr-bcw", True)
    assert plugin.version == ">=1.0.0"
