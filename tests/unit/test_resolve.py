"""Backend names are resolved once at load and on a period (upstream.resolve_backends),
never per connection. Uses the local resolver only (localhost from /etc/hosts)."""

import asyncio

from fastlb.balancer import Backend
from fastlb.upstream import is_ip, resolve_backends


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_names_are_resolved_and_literals_left_alone():
    named = Backend(0, "localhost", 8080, 1, "p")
    literal = Backend(1, "127.0.0.1", 8081, 1, "p")
    v6 = Backend(2, "::1", 8082, 1, "p")
    assert named.addr == "localhost"  # until resolved, a connect would resolve it itself

    async def go():
        await resolve_backends(asyncio.get_running_loop(), [named, literal, v6])

    run(go())
    assert is_ip(named.addr) and named.addr in ("127.0.0.1", "::1")
    assert literal.addr == "127.0.0.1" and v6.addr == "::1"


def test_a_failed_resolution_keeps_the_last_address(caplog):
    b = Backend(0, "no-such-host.invalid", 80, 1, "p")  # RFC 6761: .invalid never resolves
    b.addr = "10.9.8.7"  # the address a previous refresh found

    async def go():
        await resolve_backends(asyncio.get_running_loop(), [b])

    run(go())
    assert b.addr == "10.9.8.7"
    assert "cannot resolve no-such-host.invalid" in caplog.text
