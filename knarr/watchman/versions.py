"""Release versions: ordering, ``>=1.0,<2`` specifiers, and wheel file names (pure).

A small subset of PEP 440 — ``N(.N)*`` with optional ``aN``/``bN``/``rcN``, ``.postN``
and ``.devN`` — which covers release tags like ``v0.51.1``; knarr does not depend on
``packaging``, so the supervisor carries its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_VERSION_RE: Final = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|rc|alpha|beta|c)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?post[-_.]?(?P<post>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d*))?",
    re.IGNORECASE,
)
_PRE: Final = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2}
_CLAUSE_RE: Final = re.compile(r"\s*(~=|==|!=|<=|>=|<|>)\s*([^\s,]+)\s*")


@dataclass(frozen=True, order=True)
class Version:
    """A comparable version; build it with :func:`parse_version`."""

    key: tuple[object, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> Version:
    """``"v0.51.1"`` → a :class:`Version` that sorts as PEP 440 says; ``ValueError`` if not one."""
    match = _VERSION_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    release = tuple(int(p) for p in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre = (_PRE[match["pre"].lower()], int(match["pre_n"] or 0)) if match["pre"] else None
    post = int(match["post"] or 0) if match["post"] is not None else None
    dev = int(match["dev"] or 0) if match["dev"] is not None else None
    # Order within one release: .devN < aN < bN < rcN < (final) < .postN
    pre_key: tuple[int, ...] = pre if pre is not None else ((-1,) if dev is not None and
                                                           post is None else (3,))
    key = (release, pre_key, post if post is not None else -1, dev if dev is not None else 1 << 62)
    return Version(key, text.strip().removeprefix("v").removeprefix("V"))


def is_prerelease(text: str) -> bool:
    """``1.0rc1``, ``1.0.dev3``: skipped by "latest" and by specifiers, as pip does."""
    match = _VERSION_RE.fullmatch(text.strip())
    return bool(match and (match["pre"] or match["dev"] is not None))


def is_version(text: str) -> bool:
    return _VERSION_RE.fullmatch(text.strip()) is not None


def satisfies(version: str, specifier: str) -> bool:
    """Does ``version`` meet every clause of ``specifier`` (``">=1.0, <2"``; "" = any)?"""
    v = parse_version(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        match = _CLAUSE_RE.fullmatch(clause)
        if not match:
            raise ValueError(f"not a version specifier: {clause!r}")
        op, text = match.groups()
        if op in ("==", "!=") and text.endswith(".*"):
            prefix = text[:-2].removeprefix("v").split(".")
            equal = v.text.split(".")[: len(prefix)] == prefix
            if equal != (op == "=="):
                return False
            continue
        other = parse_version(text)
        if op == "~=":
            parts = other.text.split(".")
            if len(parts) < 2:
                raise ValueError(f"~= needs at least two version parts: {clause!r}")
            upper = ".".join(parts[:-2] + [str(int(parts[-2]) + 1)])
            if not (v >= other and v < parse_version(upper)):
                return False
            continue
        ok = {"==": v.key == other.key, "!=": v.key != other.key, "<": v < other,
              "<=": v <= other, ">": v > other, ">=": v >= other}[op]
        if not ok:
            return False
    return True


def check_specifier(specifier: str) -> None:
    """Raise ``ValueError`` unless ``specifier`` parses."""
    satisfies("0", specifier)


@dataclass(frozen=True)
class WheelName:
    """The parts of ``name-version(-build)?-python-abi-platform.whl`` that matter here."""

    distribution: str
    version: str

    @property
    def project(self) -> str:
        """The normalized project name (``Knarr_BCW`` → ``knarr-bcw``)."""
        return normalize(self.distribution)


def parse_wheel_name(filename: str) -> WheelName:
    """Split a wheel's file name; ``ValueError`` if it is not one."""
    if not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename!r}")
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6) or not is_version(parts[1]):
        raise ValueError(f"not a wheel file name: {filename!r}")
    return WheelName(parts[0], parts[1])


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
