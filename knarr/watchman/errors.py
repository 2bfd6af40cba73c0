"""What the supervisor raises, under :class:`knarr.errors.KnarrError`.

::

    KnarrError
    ├── ConfigError             watchman.toml / plugins.toml / a flag is wrong (knarr.errors)
    ├── NetworkError            the node's cockpit does not answer (knarr.errors)
    └── WatchmanError           the supervisor cannot do what was asked
        ├── AlreadyRunning      another watchman holds the data folder
        ├── ReleaseError        a release source answered garbage, or a download is corrupt
        ├── InstallError        creating a virtual environment or pip install failed
        └── VaultError          the vault cannot be created or opened

The CLI prints each as one line and exits non-zero.
"""

from __future__ import annotations

from knarr.errors import KnarrError


class WatchmanError(KnarrError):
    """The supervisor cannot do what was asked."""


class AlreadyRunning(WatchmanError):
    """Another watchman holds this data folder's lock."""


class ReleaseError(WatchmanError):
    """A release source answered garbage, or a downloaded file is not what it claims."""


class InstallError(WatchmanError):
    """A virtual environment could not be created, or pip failed."""


class VaultError(WatchmanError):
    """The vault cannot be created or opened (wrong passphrase, corrupt file)."""
