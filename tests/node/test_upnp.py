"""UPnP port mapping through a fake gateway (no router exists here), same interface."""

from __future__ import annotations

import asyncio

import pytest

from knarr.node.upnp import GatewayError, Mapping, PortMapper, wants_upnp


class FakeGateway:
    """An Internet Gateway Device in memory: mappings with leases, failures on demand."""

    def __init__(self, *, present: bool = True, refuse: set[int] | None = None) -> None:
        self.present = present
        self.refuse = refuse or set()
        self.mappings: dict[tuple[int, str], tuple[str, int, int]] = {}
        self.adds = 0
        self.fail_renewals = False

    def discover(self, timeout_ms: int) -> None:
        if not self.present:
            raise GatewayError("no UPnP gateway answered on the local network")

    def lan_address(self) -> str:
        return "192.168.1.20"

    def external_address(self) -> str:
        return "203.0.113.7"

    def add_mapping(self, external_port: int, protocol: str, internal_host: str,
                    internal_port: int, description: str, lease_s: int) -> None:
        if external_port in self.refuse or (self.fail_renewals and self.adds >= 3):
            raise GatewayError(f"mapping {protocol} {external_port} refused")
        self.adds += 1
        self.mappings[(external_port, protocol)] = (internal_host, internal_port, lease_s)

    def delete_mapping(self, external_port: int, protocol: str) -> None:
        self.mappings.pop((external_port, protocol), None)


PORTS = [Mapping(9000, "UDP"), Mapping(9000, "TCP"), Mapping(9001, "TCP")]


async def test_maps_every_port_and_learns_the_external_address() -> None:
    gateway = FakeGateway()
    mapper = PortMapper(gateway, PORTS, lease_s=3600)
    assert await mapper.start() == "203.0.113.7"
    assert set(gateway.mappings) == {(9000, "UDP"), (9000, "TCP"), (9001, "TCP")}
    assert gateway.mappings[(9001, "TCP")] == ("192.168.1.20", 9001, 3600)
    await mapper.stop()
    assert gateway.mappings == {}


async def test_leases_are_renewed_before_they_run_out() -> None:
    gateway = FakeGateway()
    mapper = PortMapper(gateway, PORTS, lease_s=0.02)  # type: ignore[arg-type]
    await mapper.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while mapper.renewals < 2:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert gateway.adds >= 3 * 3
    await mapper.stop()
    assert gateway.mappings == {}


async def test_a_failed_renewal_is_retried_not_fatal() -> None:
    gateway = FakeGateway()
    gateway.fail_renewals = True
    mapper = PortMapper(gateway, PORTS, lease_s=0.02)  # type: ignore[arg-type]
    await mapper.start()
    task = mapper._task
    assert task is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1
    while loop.time() < deadline and not task.done():
        await asyncio.sleep(0.01)
    assert not task.done()  # still renewing after failures
    await mapper.stop()


async def test_no_gateway_is_a_notice_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    mapper = PortMapper(FakeGateway(present=False), PORTS)
    with caplog.at_level("INFO", logger="knarr.upnp"):
        assert await mapper.start() is None
    assert "continuing without port mapping" in caplog.text
    assert mapper.mapped == []


async def test_a_refused_mapping_cleans_up_what_was_mapped() -> None:
    gateway = FakeGateway(refuse={9001})
    mapper = PortMapper(gateway, PORTS)
    assert await mapper.start() is None
    assert gateway.mappings == {}


@pytest.mark.parametrize(("host", "expected"), [
    ("192.168.1.20", True), ("10.0.0.5", True), ("127.0.0.1", False),
    ("1.2.3.4", False), ("9.9.9.9", False), ("::1", False), ("localhost", False),
])
def test_only_private_ipv4_nodes_look_for_a_gateway(host: str, expected: bool) -> None:
    assert wants_upnp(host) is expected
