"""Every error Knarr raises, in one hierarchy.

::

    KnarrError
    ├── ConfigError                 knarr.toml or a flag is wrong (names the file and key)
    ├── StorageError                the node database cannot be opened or migrated
    ├── LocalProtocolError          we asked the protocol for something it cannot do
    │   └── RecordTooLarge          a skill record would not fit in one datagram
    ├── RemoteProtocolError         a peer sent something invalid (costs it reputation)
    │   ├── OversizedMessage        longer than the limit; rejected before parsing
    │   ├── TruncatedMessage        shorter than its framing says
    │   ├── MalformedMessage        not a canonical encoding, or wrong magic/version
    │   ├── MistypedMessage         unknown message type, or a field of the wrong type
    │   ├── BadSignature            signature does not verify (forged or altered)
    │   ├── StaleMessage            timestamp older than the window
    │   ├── FutureMessage           timestamp newer than the window
    │   ├── ReplayedMessage         nonce already seen inside the window
    │   └── InvalidRecord           a skill record that fails validation
    ├── NetworkError                the network did not do what we asked
    │   ├── RequestTimeout          no reply in time
    │   ├── BootstrapFailed         no bootstrap peer answered
    │   └── ProviderUnreachable     no provider could be connected to
    └── SkillError                  calling a skill failed
        ├── SkillNotFound           no handler with that name here / no provider found
        ├── HandlerError            the handler raised; the original is ``__cause__``
        └── TaskError               a remote task did not complete (``code`` says why)
            ├── TaskRefused         the provider refused it before running the handler
            ├── TaskFailed          the provider's handler raised
            └── TaskTimedOut        the handler ran past its time limit

Local errors mean the caller must change something; remote errors mean a peer
misbehaved and are never the caller's fault.
"""

from __future__ import annotations


class KnarrError(Exception):
    """Base class of every error Knarr raises on purpose."""


class ConfigError(KnarrError):
    """A configuration file or command-line flag is invalid."""


class StorageError(KnarrError):
    """The node database cannot be opened, read or migrated."""


class LocalProtocolError(KnarrError):
    """This node tried to do something the protocol does not allow."""


class RecordTooLarge(LocalProtocolError):
    """A skill record's encoding exceeds what one datagram can carry."""


class RemoteProtocolError(KnarrError):
    """A peer sent bytes that are not a valid message."""


class OversizedMessage(RemoteProtocolError):
    """The message is longer than the limit for its channel."""


class TruncatedMessage(RemoteProtocolError):
    """The message ends before its framing says it should."""


class MalformedMessage(RemoteProtocolError):
    """The message is not canonically encoded, or has a wrong magic or version."""


class MistypedMessage(RemoteProtocolError):
    """The message type is unknown, or a body field has the wrong type."""


class BadSignature(RemoteProtocolError):
    """The Ed25519 signature does not verify against the sender's key."""


class StaleMessage(RemoteProtocolError):
    """The message timestamp is older than the accepted window."""


class FutureMessage(RemoteProtocolError):
    """The message timestamp is further in the future than the accepted window."""


class ReplayedMessage(RemoteProtocolError):
    """The message nonce was already seen from this sender inside the window."""


class InvalidRecord(RemoteProtocolError):
    """A skill record failed validation (signature, expiry, key or fields)."""


class NetworkError(KnarrError):
    """A network operation did not complete."""


class RequestTimeout(NetworkError):
    """A peer did not answer in time."""


class BootstrapFailed(NetworkError):
    """None of the bootstrap peers answered."""


class SkillError(KnarrError):
    """Calling a skill failed."""


class SkillNotFound(SkillError):
    """No skill of that name is registered here, or no provider was found."""


class HandlerError(SkillError):
    """A skill handler raised; the handler's exception is the ``__cause__``."""


class ProviderUnreachable(NetworkError):
    """No provider of the skill could be connected to."""


class TaskError(SkillError):
    """A remote task did not complete. ``code`` is the wire error code."""

    code = "task_error"
    receipt: object | None = None
    """The provider's verified receipt (``knarr.node.economy.Receipt``), when the
    handler ran and failed or timed out."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class TaskRefused(TaskError):
    """The provider refused the task (visibility, size, schema, credit, shutdown)."""

    code = "refused"


class TaskFailed(TaskError):
    """The provider ran the handler and it raised."""

    code = "handler_error"


class TaskTimedOut(TaskError):
    """The handler did not finish within the task's time limit."""

    code = "timeout"
