"""``knarr-watchman init --data-dir DIR``: a production node from nothing, in one command.

Order matters: everything that can refuse (an existing identity, a missing passphrase, a
bad wheel) is checked before anything is written, and the identity is made only after
knarr is installed, so a failed init leaves no half-made node behind to run.
"""

from __future__ import annotations

import getpass
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from knarr.errors import ConfigError
from knarr.node.identity import Identity
from knarr.node.store import Store
from knarr.watchman.config import DEFAULT_GITHUB_API, DEFAULT_SOURCE, watchman_toml
from knarr.watchman.errors import VaultError, WatchmanError
from knarr.watchman.installs import Installs
from knarr.watchman.releases import GitHubReleases, check_wheel
from knarr.watchman.upgrade import TOKEN_FILE
from knarr.watchman.vault import PASSPHRASE_ENV, Vault, base58, read_public
from knarr.watchman.versions import parse_wheel_name

RULE = "=" * 60
_IDENTITY_KEY = "signing_key"

KNARR_TOML = """[node]
port = 9000
host = "0.0.0.0"
storage = "node.db"
# advertise_host = "203.0.113.50"   # your public IP, if auto-detection picks the wrong one
max_task_timeout = 3600

[network]
# bootstrap = ["bootstrap1.knarr.network:9000"]   # default: the public bootstrap peers
upnp = true

[sidecar]
asset_dir = "assets"
"""


@dataclass(frozen=True)
class InitOptions:
    data_dir: Path
    force: bool = False
    wheel: Path | None = None
    github_token: str | None = None
    thrall: bool | None = None
    """``None``: ask when stdin is a terminal, else leave it off."""


async def init_node(options: InitOptions) -> int:
    data_dir = options.data_dir.expanduser().absolute()
    print(f"Python: {python_for_venvs()}")
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"--data-dir: {data_dir} exists and is not a folder")
    node_db = data_dir / "node.db"
    existing = _existing_identity(node_db)
    if existing and not options.force:
        raise WatchmanError(
            f"{node_db} already holds a node identity ({existing[:16]}…); not overwriting it. "
            "Pass --force to make a new identity (the old one is lost unless backed up)")
    vault_path = data_dir / "vault.db"
    passphrase = None if vault_path.exists() else _passphrase()
    keep_knarr_toml = (data_dir / "knarr.toml").exists()
    thrall = options.thrall
    if thrall is None and not keep_knarr_toml:
        thrall = _ask_thrall()
    wheel = options.wheel.expanduser().absolute() if options.wheel else None
    if wheel is not None:
        if not wheel.is_file():
            raise ConfigError(f"--wheel: {wheel} does not exist")
        try:
            wheel_name = parse_wheel_name(wheel.name)
        except ValueError as exc:
            raise ConfigError(f"--wheel: {exc}") from None
        check_wheel(wheel, "knarr", wheel_name.version)

    for folder in (data_dir, data_dir / "watchman", data_dir / "venvs", data_dir / "assets",
                   data_dir / "skills", data_dir / "plugins"):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if options.github_token:
        _write_private(data_dir / "watchman" / TOKEN_FILE, options.github_token + "\n")

    print("Creating virtual environment...", flush=True)
    installs = Installs(data_dir)
    if wheel is None:
        owner, _, repo = DEFAULT_SOURCE.removeprefix("github:").partition("/")
        source = GitHubReleases(owner, repo, api=DEFAULT_GITHUB_API, token=options.github_token)
        release = await source.latest("knarr")
        wheel = await source.fetch(release, data_dir / "watchman" / "downloads")
        version = release.version
    else:
        version = parse_wheel_name(wheel.name).version
    await installs.install(version, wheel)
    installs.activate(version, verify=False)
    print(f"Installed knarr {version}")

    print("Checking identity...", flush=True)
    node_id = _make_identity(node_db, replace=bool(existing))
    if passphrase is not None:
        wallet = _make_vault(vault_path, passphrase)
    else:
        wallet = read_public(vault_path, "wallet_address") or "(in the existing vault.db)"
        print(f"Keeping the existing vault {vault_path}")

    knarr_toml = KNARR_TOML + f"\n[thrall]\nenabled = {'true' if thrall else 'false'}\n"
    for name, text in (("knarr.toml", knarr_toml), ("watchman.toml", watchman_toml(data_dir)),
                       ("watchman/plugins.toml", PLUGINS_TOML)):
        path = data_dir / name
        if path.exists():
            print(f"Keeping the existing {name}")
        else:
            path.write_text(text)

    print(RULE)
    print("Node initialized successfully!")
    print()
    print(f"Node ID: {node_id}")
    print(f"Wallet: {wallet}")
    print(f"Version: {version}")
    print(f"Data dir: {data_dir}")
    if keep_knarr_toml:
        print("Thrall: as set in the existing knarr.toml ([thrall] enabled)")
    else:
        print(f"Thrall: {'enabled' if thrall else 'disabled'} ([thrall] in knarr.toml)")
    print()
    print("WARNING: Back up node.db and vault.db — these contain your")
    print("node identity and encrypted secrets and cannot be recovered")
    print("if lost.")
    print()
    print("To start your node:")
    print(f"knarr-watchman --data-dir {data_dir} run")
    print(RULE)
    return 0


def python_for_venvs() -> str:
    """The interpreter new environments are made from (this one), checked to be 3.11+."""
    version = platform.python_version_tuple()
    if (int(version[0]), int(version[1])) < (3, 11):
        raise WatchmanError(f"knarr needs Python 3.11 or newer; {sys.executable} is "
                            f"{platform.python_version()}")
    return sys.executable


def _existing_identity(node_db: Path) -> str | None:
    if not node_db.is_file():
        return None
    store = Store(node_db)
    try:
        if store.get_meta(_IDENTITY_KEY) is None:
            return None
        return Identity.load_or_create(store).node_id_hex
    finally:
        store.close()


def _make_identity(node_db: Path, *, replace: bool) -> str:
    store = Store(node_db)
    try:
        if replace:
            identity = Identity.generate()
            with store.transaction():
                store.set_meta(_IDENTITY_KEY, identity.seed)
        else:
            identity = Identity.load_or_create(store)
        return identity.node_id_hex
    finally:
        store.close()
        os.chmod(node_db, 0o600)


def _make_vault(path: Path, passphrase: str) -> str:
    wallet = nacl.signing.SigningKey.generate()
    address = base58(bytes(wallet.verify_key))
    vault = Vault.create(path, passphrase)
    try:
        vault.put("wallet_signing_key", bytes(wallet))
        vault.set_public("wallet_address", address)
    finally:
        vault.close()
    return address


def _passphrase() -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise VaultError(f"the vault needs a passphrase: set {PASSPHRASE_ENV}, or run init "
                         "in a terminal to type one")
    first = getpass.getpass("Vault passphrase (min. 8 characters, needed to open vault.db): ")
    if first != getpass.getpass("Repeat the passphrase: "):
        raise VaultError("the passphrases differ")
    return first


def _ask_thrall() -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input("Enable the Thrall intelligence layer (recipes)? [y/N] ").strip().lower()
    return answer in ("y", "yes")


PLUGINS_TOML = """# Plugins installed into the node's environment by `knarr-watchman plugin sync`.
# [plugins.bcw]
# source = "github:knarrnet/knarr-bcw"   # or a wheel file, or a project folder
# version = ">=1.0.0"
# enabled = true
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
