"""``knarr serve``: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import psutil

from knarr.config import Config, check_host, default_config, load_config, parse_hostport
from knarr.errors import BootstrapFailed, ConfigError
from knarr.node.bridges import Bridge
from knarr.node.dht import DhtSettings
from knarr.node.handlers import load_handlers, sheet_of
from knarr.node.node import Node, outbound_address
from knarr.node.upnp import Mapping, MiniupnpcGateway, PortMapper, wants_upnp
from knarr.recipes.engine import Thrall

log = logging.getLogger("knarr.serve")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="start a node",
        description="Start a Knarr node: join the DHT and serve until Ctrl-C or SIGTERM.",
    )
    p.add_argument("--config", help="path to knarr.toml (default: ./knarr.toml if it exists)")
    p.add_argument("--port", type=int, help="listen port (default: 9000)")
    p.add_argument("--host", help="bind address (default: 0.0.0.0)")
    p.add_argument("--advertise-host", help="address announced to peers (default: auto-detected)")
    p.add_argument("--storage", help="SQLite database path (default: node.db)")
    p.add_argument(
        "--bootstrap",
        help='comma-separated host:port peers (default: from config); "" for none',
    )
    p.add_argument(
        "--bridge", action="append", default=[], metavar="COMMAND",
        help='serve the tools of an MCP server as skills, e.g. "python3 server.py" '
        "(repeatable)",
    )
    p.add_argument(
        "--bridge-timeout", type=float, default=30.0,
        help="MCP tool call timeout in seconds for --bridge servers (default: 30)",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=10.0,
        help="seconds in-flight tasks get to finish on shutdown (default: 10)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    p.add_argument(
        "--data-dir",
        help="keep knarr.toml, the database, assets and the cockpit socket in this folder",
    )
    p.add_argument(
        "--headless", action="store_true",
        help="for servers: no banner, structured log lines only (the cockpit is always on)",
    )
    p.add_argument(
        "--cockpit", type=int, metavar="PORT",
        help="also serve the cockpit on 127.0.0.1:PORT (bearer token in the data folder)",
    )
    p.set_defaults(run=run)


def resolve_config(args: argparse.Namespace) -> Config:
    """The config file (if any) with command-line flags applied on top."""
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    if args.config:
        config = load_config(args.config)
    elif data_dir is not None and (data_dir / "knarr.toml").is_file():
        config = load_config(data_dir / "knarr.toml")
    elif data_dir is None and Path("knarr.toml").is_file():
        config = load_config("knarr.toml")
    else:
        config = default_config()
        if data_dir is not None:
            config = dataclasses.replace(
                config, base_dir=data_dir.absolute(),
                sidecar=dataclasses.replace(
                    config.sidecar, asset_dir=data_dir.absolute() / "assets"
                ),
            )
    node = config.node
    changes: dict[str, Any] = {}
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: expected 0..65535, got {args.port}")
        changes["port"] = args.port
    if args.host is not None:
        changes["host"] = check_host(args.host, "--host")
    if args.advertise_host is not None:
        changes["advertise_host"] = check_host(args.advertise_host, "--advertise-host")
    if args.cockpit is not None and not 0 <= args.cockpit <= 65535:
        raise ConfigError(f"--cockpit: expected a port 0..65535, got {args.cockpit}")
    if args.storage is not None:
        changes["storage"] = args.storage
    network = config.network
    if args.bootstrap is not None:
        entries = tuple(e.strip() for e in args.bootstrap.split(",") if e.strip())
        for entry in entries:
            parse_hostport(entry, source="--bootstrap")
        network = dataclasses.replace(network, bootstrap=entries)
    return dataclasses.replace(config, node=dataclasses.replace(node, **changes), network=network)


def bind_address(host: str) -> str:
    """The IP address to listen on for ``host`` (an address, or a name such as
    ``localhost`` resolved once here, so every socket binds the same address)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"node.host: cannot resolve {host!r} to an address to listen on "
                          f"({exc})") from exc
    return str(infos[0][4][0])


def detect_advertise_host(bind_host: str, bootstrap: list[tuple[str, int]]) -> str:
    """The address peers should use: the bind address if specific, else the interface
    that routes to the first bootstrap peer, else the first non-loopback interface."""
    if bind_host and not ipaddress.ip_address(bind_host).is_unspecified:
        return bind_host
    for addr in bootstrap:
        try:
            return outbound_address(addr)
        except OSError:
            continue
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return "127.0.0.1"


def _print_field(key: str, value: str) -> None:
    print(f"{key}: {value}", flush=True)


def _log_field(key: str, value: str) -> None:
    level = logging.WARNING if key == "Warning" else logging.INFO
    name = key.lower().replace(" ", "_").replace("-", "_").replace("(", "").replace(")", "")
    log.log(level, "%s=%s", name, value, extra={"kv": {name: value}})


def advertise_warning(host: str) -> str | None:
    """Why peers elsewhere may not reach ``host``, if they may not."""
    ip = ipaddress.ip_address(host)
    if ip.is_loopback:
        return f"{host} is a loopback address; only nodes on this machine can reach it."
    if ip.is_private:
        return (
            f"{host} is a private address; peers outside this network cannot reach it. "
            "Set [node] advertise_host or --advertise-host to your public IP."
        )
    return None


async def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    node_cfg, net_cfg = config.node, config.network
    storage = node_cfg.storage
    if storage != ":memory:" and not os.path.isabs(storage):
        if args.data_dir and args.storage is None:
            storage = str(Path(args.data_dir).absolute() / storage)
        elif config.path is not None:
            storage = str(config.resolve_path(storage))
    data_dir = (
        Path(args.data_dir).absolute() if args.data_dir
        else Path(storage).absolute().parent if storage != ":memory:" else Path.cwd()
    )
    bootstrap = list(net_cfg.bootstrap)
    resolved = [parse_hostport(b, source="bootstrap") for b in bootstrap]
    handlers = load_handlers(config)  # a bad handler fails before anything listens
    host = bind_address(node_cfg.host)
    advertise = node_cfg.advertise_host or detect_advertise_host(host, resolved)
    settings = DhtSettings(
        window_s=net_cfg.clock_skew,
        subnet_limit=net_cfg.subnet_limit,
        rate_limit=net_cfg.rate_limit,
        rate_burst=net_cfg.rate_burst,
    )
    sidecar = node_cfg.effective_sidecar_port
    node = Node(
        host, node_cfg.port, storage=storage, advertise_host=advertise,
        settings=settings, max_task_timeout=node_cfg.max_task_timeout,
        sidecar_port=sidecar or None, asset_dir=config.sidecar.asset_dir,
        max_asset_size=node_cfg.max_asset_size, economy=config.economy,
        cockpit_dir=data_dir, cockpit_port=args.cockpit,
    )
    say = _log_field if args.headless else _print_field
    if not args.bridge_timeout > 0:
        raise ConfigError(f"--bridge-timeout: expected seconds > 0, got {args.bridge_timeout}")
    wanted = dict(config.bridges) | {cmd: args.bridge_timeout for cmd in args.bridge}
    pending = [Bridge(cmd, timeout, node) for cmd, timeout in wanted.items()]  # checks them
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bridges: list[Bridge] = []
    mapper: PortMapper | None = None
    thrall: Thrall | None = None

    async def start_up() -> None:
        nonlocal mapper, thrall
        await node.start()
        if config.thrall.enabled:
            source = config.path
            thrall = Thrall(
                node, config.thrall, base_dir=config.base_dir,
                reload_config=(lambda: load_config(source).thrall) if source else None,
                credit_limit_for=config.economy.limit_for,
            )
            thrall_report = (await thrall.start()).summary()
        say("Node ID", node.node_id)
        say("Listening", f"{host}:{node.port}")
        if node.sidecar_port and node.assets is not None:
            where = f"{host}:{node.sidecar_port}"
            say("Sidecar", f"{where} (assets in {node.assets.directory})")
        label = "Advertise" if node_cfg.advertise_host else "Auto-detected advertise"
        say(f"{label} address", advertise)
        if node.cockpit is not None:
            say("Cockpit", str(node.cockpit.socket_path) + (
                f" and 127.0.0.1:{node.cockpit.port}" if args.cockpit is not None else ""))
        if thrall is not None:
            say("Thrall", f"{thrall_report} (recipes in {thrall.recipes_dir})")
        if not node_cfg.advertise_host:
            warning = advertise_warning(advertise)
            if warning:
                say("Warning", warning)
        if net_cfg.upnp and wants_upnp(advertise):
            mapper = PortMapper(MiniupnpcGateway(), [
                Mapping(node.port, "UDP"), Mapping(node.port, "TCP"),
                *([Mapping(node.sidecar_port, "TCP")] if node.sidecar_port else []),
            ])
            external = await mapper.start()
            if external and not node_cfg.advertise_host:
                node.advertise_host = external
                say("External address (UPnP)", external)
        if bootstrap:
            try:
                size = await node.join(bootstrap)
                log.info("joined the network: %d peers in the routing table", size)
            except BootstrapFailed as exc:
                log.warning("%s; serving anyway, peers can join through this node", exc)
        for name, handler in handlers.items():
            node.register_handler(name, handler)
            skill = config.skills[name]
            await node.announce(sheet_of(skill))
            where = "local only" if skill.visibility == "private" else skill.visibility
            say("Serving skill", f"{name} ({where})")
        for bridge in pending:
            bridges.append(bridge)  # stopped on the way out, started or not
            await bridge.start()
            say("Bridge", f"{bridge.command} ({', '.join(bridge.skills) or 'no tools'})")
        if not args.headless:
            print(flush=True)

    try:
        # Ctrl-C or SIGTERM also stops a start-up that is still under way (a bridge
        # being started, a slow bootstrap peer), not only a node that is serving.
        starting = asyncio.ensure_future(start_up())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("stopped during start-up")
        else:
            starting.result()  # start-up errors are reported as usual
            await stop.wait()
        log.info("shutting down: %d tasks in flight", node.tasks.inflight)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if thrall is not None:
            await thrall.stop()
        for bridge in bridges:
            await bridge.stop()
        if mapper is not None:
            await mapper.stop()
        await node.stop(grace=max(0.0, args.drain_timeout))
    return 0
