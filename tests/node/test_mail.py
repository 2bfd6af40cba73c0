"""Agent mail between real nodes on loopback: delivery, retry after a restart, no
duplicates, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from knarr.node.mail import MAX_BODY, MailError
from knarr.node.node import Node
from tests.conftest import NodeFactory, wait_for


async def test_mail_is_delivered_sealed_and_signed(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    await b.join([f"127.0.0.1:{a.port}"])
    mail_id = a.send_mail(b.node_id, {"cargo": "amber", "casks": 3}, "manifest")
    await wait_for(lambda: bool(b.mailbox.inbox()))
    [mail] = b.mailbox.inbox()
    assert (mail.id, mail.peer, mail.type, mail.body) == (
        mail_id, a.node_id, "manifest", {"cargo": "amber", "casks": 3}
    )
    await wait_for(lambda: a.mailbox.outbox()[0]["delivered"] is not None)
    received = [e for e in b.events.since(0) or [] if e.type == "mail.received"]
    assert received and received[0].data["sender"] == a.node_id


async def test_mail_waits_for_a_recipient_that_is_away(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    a = await make_node()
    b = Node("127.0.0.1", 0, storage=tmp_path / "b.db")
    await b.start()
    await b.join([f"127.0.0.1:{a.port}"])
    b_id, b_port = b.node_id, b.port
    await b.stop()

    mail_id = a.send_mail(b_id, "while you were away")
    await wait_for(lambda: a.mailbox.outbox()[0]["attempts"] >= 1)
    assert a.mailbox.outbox()[0]["delivered"] is None

    back = Node("127.0.0.1", b_port, storage=tmp_path / "b.db")
    await back.start()  # rejoins through the peers it remembers
    try:
        # Make the retry due now rather than waiting out the backoff.
        a.store.execute("UPDATE mail_out SET next_try = 0")
        a._mail_wakeup.set()
        await wait_for(lambda: bool(back.mailbox.inbox()), timeout=20)
        assert [m.id for m in back.mailbox.inbox()] == [mail_id]
    finally:
        await back.stop()


async def test_a_retried_mail_is_stored_once(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    await b.join([f"127.0.0.1:{a.port}"])
    mail_id = a.send_mail(b.node_id, "once")
    await wait_for(lambda: len(b.mailbox.inbox()) == 1)
    # The same mail sent again (as if the acknowledgement had been lost).
    a.store.execute("UPDATE mail_out SET delivered = NULL, next_try = 0")
    a._mail_wakeup.set()
    await wait_for(lambda: a.mailbox.outbox()[0]["delivered"] is not None)
    assert [m.id for m in b.mailbox.inbox()] == [mail_id]


async def test_bad_mail_is_refused_before_it_is_queued(make_node: NodeFactory) -> None:
    a = await make_node()
    with pytest.raises(MailError, match="not a node id"):
        a.send_mail("not-a-node", "hi")
    with pytest.raises(MailError, match="the limit is"):
        a.send_mail("ab" * 32, "x" * (MAX_BODY + 1))
    with pytest.raises(MailError, match="mail type"):
        a.send_mail("ab" * 32, "hi", "")
    assert a.mailbox.outbox() == []
