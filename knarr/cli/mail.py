"""``knarr mail send`` and ``knarr mail list``: mail as the project's node."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

from knarr.cli.cockpit_client import cockpit_request, find_socket
from knarr.errors import ConfigError
from knarr.node.identity import Identity
from knarr.node.mail import Mailbox
from knarr.node.store import Store


def add_parsers(sub: Any) -> None:
    mail = sub.add_parser(
        "mail", help="send and read agent mail",
        description="Mail between nodes, addressed by node id, sent as the node of the "
        "project in the current folder (through its cockpit when it is running).",
    )
    inner = mail.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    send = inner.add_parser("send", help="send a mail")
    send.add_argument("--to", required=True, help="recipient node id (64 hex characters)")
    send.add_argument("--body", required=True, help="the message text (or JSON with --json-body)")
    send.add_argument("--type", default="text", help="message type (default: text)")
    send.add_argument("--json-body", action="store_true", help="parse --body as JSON")
    send.add_argument("--storage", default="node.db", help="node database (default: node.db)")
    send.set_defaults(run=run_send, log_level="WARNING")
    show = inner.add_parser("list", help="list received mail")
    show.add_argument("--json", action="store_true", help="print raw JSON")
    show.add_argument("--storage", default="node.db", help="node database (default: node.db)")
    show.set_defaults(run=run_list, log_level="WARNING")


async def run_send(args: argparse.Namespace) -> int:
    body: Any = args.body
    if args.json_body:
        try:
            body = json.loads(args.body)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--body is not valid JSON: {exc}") from exc
    socket = find_socket(str(Path(args.storage).parent))
    if socket is not None:
        result = await cockpit_request(
            socket, "POST", "/v1/mail", {"to": args.to, "body": body, "type": args.type}
        )
        print(f"Queued mail {result['id']} to {args.to[:16]}... (the node delivers it)")
        return 0
    if not Path(args.storage).is_file():
        raise ConfigError(f"{args.storage}: no node database here; run this in a project folder")
    store = Store(args.storage)
    try:
        identity = Identity.load_or_create(store)
        import os

        mail_id = os.urandom(16).hex()
        import time

        Mailbox(store, time.time).queue(mail_id, args.to.lower(), args.type, body)
    finally:
        store.close()
    print(f"Queued mail {mail_id} to {args.to[:16]}...; node {identity.node_id_hex[:16]}... "
          "is not running and will deliver it when it starts")
    return 0


async def run_list(args: argparse.Namespace) -> int:
    store = Store(args.storage, readonly=True)
    try:
        mails = Mailbox(store, lambda: 0.0).inbox()
    finally:
        store.close()
    if args.json:
        print(json.dumps([m.to_dict() for m in mails], indent=2))
        return 0
    if not mails:
        print("No mail.")
        return 0
    for m in mails:
        when = datetime.datetime.fromtimestamp(m.time).strftime("%Y-%m-%d %H:%M:%S")
        body = m.body if isinstance(m.body, str) else json.dumps(m.body)
        print(f"{when}  from {m.peer[:16]}...  [{m.type}]  {body}")
    return 0
