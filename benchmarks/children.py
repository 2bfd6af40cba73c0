"""Child processes for the benchmarks: a server in a process of its own, driven by
commands on its stdin, one JSON line on its stdout per answer (its first line says it
is ready). It exits when its stdin closes.

    child = Child([sys.executable, __file__, "--role", "floor"], name="floor")
    child.ready()               # the first line: {"port": ...}
    child.ask("stats")          # one command, one answer
    child.close()               # EOF, then SIGTERM, then SIGKILL
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import select
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

DEFAULT_TIMEOUT_S = 30.0


class Child:
    """A benchmark's server subprocess and its line protocol."""

    def __init__(self, argv: Sequence[str], *, name: str,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.timeout = timeout
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.port = 0
        self.hello: dict[str, Any] = {}

    def _out(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def read(self) -> dict[str, Any]:
        """The child's next answer; an error if it exits or stays silent too long."""
        ready, _, _ = select.select([self._out()], [], [], self.timeout)
        if not ready:
            raise RuntimeError(f"the {self.name} process did not answer in {self.timeout:g} s")
        line = self._out().readline()
        if not line:
            raise RuntimeError(f"the {self.name} process exited (code {self.proc.poll()})")
        value: dict[str, Any] = json.loads(line)
        return value

    def ready(self) -> dict[str, Any]:
        """Wait for the child's first line, which names its port."""
        self.hello = self.read()
        self.port = int(self.hello.get("port", 0))
        return self.hello

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        """EOF on stdin, then SIGTERM, then SIGKILL, each given a few seconds."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def stop(proc: subprocess.Popen[Any], *, first: signal.Signals | None = None,
         grace: float = 5.0) -> None:
    """Wait for ``proc`` to end, escalating to SIGTERM and then SIGKILL after ``grace``
    seconds each (or sending ``first`` before the first wait)."""
    steps: list[Callable[[], None] | None] = [None, proc.terminate, proc.kill]
    if first is not None:
        steps[0] = lambda: proc.send_signal(first)
    for step in steps:
        if step is not None:
            with contextlib.suppress(ProcessLookupError):
                step()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class ChildProfile:
    """The child's side of two commands every benchmark child answers: ``profile-start``
    and ``profile-stop PATH`` (cProfile, with ``timer`` if given, dumped to PATH)."""

    def __init__(self, timer: Callable[[], float] | None = None) -> None:
        self._timer = timer
        self._profile: cProfile.Profile | None = None

    def answer(self, verb: str, arg: str) -> dict[str, Any] | None:
        """The reply to a profiling command, or ``None`` if ``verb`` is not one."""
        if verb == "profile-start":
            self._profile = cProfile.Profile(self._timer) if self._timer else cProfile.Profile()
            self._profile.enable()
            return {"ok": True}
        if verb == "profile-stop" and self._profile is not None:
            self._profile.disable()
            self._profile.dump_stats(arg)
            self._profile = None
            return {"ok": True, "path": arg}
        return None


C = TypeVar("C", bound=Child)


@contextlib.contextmanager
def started(make: Callable[[str], C], roles: Sequence[str]) -> Iterator[list[C]]:
    """Start a child per role (``make(role)``), wait until each is ready, and close them
    all on the way out, whatever happened."""
    running: list[C] = []
    try:
        for role in roles:
            running.append(make(role))
        for child in running:
            child.ready()
        yield running
    finally:
        for child in running:
            child.close()
