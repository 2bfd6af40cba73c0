"""Thrall's delegated settlement key: a separate Ed25519 key that the node identity
authorises, by a certificate, to sign netting settlements up to a daily ceiling.

The key and its certificate live in one file (mode 0600). Deleting the file revokes the
key here at once: Thrall reads it before every settlement. (Peers cannot learn of a
revocation; they honour the certificate until it expires, which is why certificates are
short-lived and capped.) What the key spent today is summed from Thrall's own firing
records in the node database, so the ceiling survives restarts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from knarr.errors import ConfigError
from knarr.node.economy import InvalidReceipt, to_micro
from knarr.node.identity import Identity
from knarr.node.settlement import DelegateCertificate, Delegation
from knarr.node.store import Store

FORMAT = "knarr-thrall-delegate/1"


class DelegateError(ConfigError):
    """The delegate key file is missing pieces, corrupt, or not this node's."""


def issue(
    path: Path,
    identity: Identity,
    *,
    ceiling: float,
    days: float,
    clock: Callable[[], float] = time.time,
) -> Delegation:
    """Make a fresh delegate key, certify it with ``identity`` (``ceiling`` credits of
    spending per UTC day, valid for ``days``) and write both to ``path`` (mode 0600)."""
    if days <= 0:
        raise DelegateError("the certificate must be valid for more than 0 days")
    key = Identity.generate()
    certificate = DelegateCertificate.issue(
        identity, key.public_key, ceiling=to_micro(ceiling),
        expires=int(clock() + days * 86400),
    )
    text = json.dumps({
        "format": FORMAT, "seed": key.seed.hex(), "certificate": certificate.encode().hex(),
        "node_id": identity.node_id_hex,
    }, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".delegate-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Delegation(key, certificate)


def load(path: Path, node: Identity) -> Delegation | None:
    """The delegation in ``path``; ``None`` if the file is gone (revoked)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DelegateError(f"{path}: cannot read the delegate key: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DelegateError(f"{path}: not a knarr delegate key file")
    try:
        key = Identity.from_seed(bytes.fromhex(str(data["seed"])))
        certificate = DelegateCertificate.parse(bytes.fromhex(str(data["certificate"])))
    except (KeyError, ValueError, InvalidReceipt) as exc:
        raise DelegateError(f"{path}: the delegate key file is corrupt: {exc}") from exc
    if certificate.key != key.public_key:
        raise DelegateError(f"{path}: the certificate is for another key")
    if certificate.node_key != node.public_key:
        raise DelegateError(f"{path}: the certificate was issued by another node")
    return Delegation(key, certificate)


def spent_since(store: Store, since: float) -> int:
    """Micro-credits the delegate paid out since ``since``, from Thrall's firings."""
    total = 0
    rows = store.execute(
        "SELECT data FROM journal WHERE kind = 'recipe' AND time >= ? AND data LIKE '%spent%'",
        (since,),
    )
    for (data,) in rows:
        try:
            value = json.loads(data).get("spent", 0)
        except (ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and value > 0:
            total += to_micro(float(value))
    return total
