"""Hosts in network namespaces, cabled to a two-bridge switch that can be cut in half.

::

                     switch namespace  <tag>-sw
        br-a ── trunk-a ════════ trunk-b ── br-b
        │  │  │  │                         │  │  │  │
        p0 p1 p2 p3   (veth pairs)         p4 p5 p6 p7
        ║  ║  ║  ║                         ║  ║  ║  ║
     eth0 in <tag>-h0 … <tag>-h7, address 10.213.<i>.2/16

Every host has its own /24 inside one /16, so the DHT's per-/24 bucket limit treats them
as distinct networks. No interface is created in the root namespace and the hosts have
no route beyond the /16, so no packet can leave the namespaces made here. Cutting the
trunk splits the hosts into side ``a`` (the first half) and side ``b``; each side still
talks to itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass

NETWORK = "10.213"
PREFIX_LEN = 16
SUBNET = f"{NETWORK}.0.0/{PREFIX_LEN}"


class NetnsCommandFailed(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def missing_prerequisite() -> str | None:
    """Why namespace tests cannot run here, or ``None`` if they can."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsCommandFailed(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def namespaces() -> set[str]:
    """Names of all named network namespaces on this machine."""
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def root_links() -> set[str]:
    """Interface names in the root namespace."""
    names = set()
    for line in ip("-o", "link", "show").splitlines():
        names.add(line.split(":")[1].strip().split("@")[0])
    return names


@dataclass(frozen=True)
class Host:
    index: int
    namespace: str
    address: str
    side: str  # "a" or "b": which bridge its cable plugs into


class Topology:
    """``hosts`` namespaces on one switch; :meth:`create`, then always :meth:`destroy`."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"knarr-{secrets.token_hex(4)}"
        self.switch = f"{self.tag}-sw"
        half = (hosts + 1) // 2
        self.hosts = [
            Host(i, f"{self.tag}-h{i}", f"{NETWORK}.{i}.2", "a" if i < half else "b")
            for i in range(hosts)
        ]
        self._created: list[str] = []
        self._root_links_before: set[str] = set()

    def side(self, name: str) -> list[Host]:
        return [h for h in self.hosts if h.side == name]

    def create(self) -> None:
        self._root_links_before = root_links()
        sw = ("-n", self.switch)
        self._add_namespace(self.switch)
        for side in "ab":
            ip(*sw, "link", "add", f"br-{side}", "type", "bridge")
            ip(*sw, "link", "set", f"br-{side}", "up")
        ip(*sw, "link", "add", "trunk-a", "type", "veth", "peer", "name", "trunk-b")
        for side in "ab":
            ip(*sw, "link", "set", f"trunk-{side}", "master", f"br-{side}", "up")
        for host in self.hosts:
            self._add_namespace(host.namespace)
            port = f"p{host.index}"
            ip(*sw, "link", "add", port, "type", "veth",
               "peer", "name", "eth0", "netns", host.namespace)
            ip(*sw, "link", "set", port, "master", f"br-{host.side}", "up")
            on_host = ("-n", host.namespace)
            ip(*on_host, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0")
            ip(*on_host, "link", "set", "eth0", "up")
            ip(*on_host, "link", "set", "lo", "up")

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._created.append(name)
        # No IPv6, so the links carry nothing but the nodes' own IPv4 traffic. Hygiene
        # only (link-local chatter could not leave the bridge either): not checked.
        ip("netns", "exec", name, "sysctl", "-qw",
           "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
           check=False)

    def routes(self, host: Host) -> list[str]:
        """``host``'s IPv4 routing table, one route per line."""
        return [line.strip() for line in ip("-n", host.namespace, "-4", "route").splitlines()]

    def cut(self) -> None:
        """Take side a's end of the trunk down: the two halves can no longer talk."""
        ip("-n", self.switch, "link", "set", "trunk-a", "down")

    def heal(self) -> None:
        ip("-n", self.switch, "link", "set", "trunk-a", "up")

    def destroy(self) -> None:
        """Delete every namespace made here (which deletes their veths and bridges).

        A process still inside one of them would keep it alive unseen, so any such
        process (only ours can be there) is killed first.
        """
        errors: list[str] = []
        for name in reversed(self._created):
            for pid in ip("netns", "pids", name, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                ip("netns", "del", name)
            except NetnsCommandFailed as exc:
                errors.append(str(exc))
        self._created.clear()
        if errors:
            raise NetnsCommandFailed("; ".join(errors))

    def leftovers(self) -> list[str]:
        """Anything of this topology that still exists (empty after :meth:`destroy`)."""
        left = sorted(n for n in namespaces() if n.startswith(self.tag))
        left += sorted(f"root-namespace link {n}" for n in root_links() - self._root_links_before)
        return left
