"""The ``knarr-watchman`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="knarr-watchman",
        description="Supervise a knarr node: crash recovery, health probes, staged upgrades.",
    )
    parser.parse_args(argv)
    print("knarr-watchman: no supervisor commands are available in this version yet",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
