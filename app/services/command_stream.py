"""Streamed commands (``Accept: application/x-ndjson`` on exec, run-ts and run-js): the output
handed on while the command runs, then the result a buffered call answers.

The same deadline and output caps apply as to a buffered call, and a timeout kills the
process tree the same way. The one difference: a caller that goes away before the end gets
the command's process tree killed (:meth:`CommandStream.close`).
"""
from __future__ import annotations

import itertools
import typing as t

from app.errors import InvalidRequest
from app.guestssh import OutputCaps, RunningCommand
from app.models import CommandResult, OutputChunk, RunResult
from app.services.outcome import OutcomeFilter
from app.services.prelude import refusal

R = t.TypeVar("R")


HEAD_BYTES = 4096  # kept of each stream for the exec history

def timeout_note(timeout: float) -> bytes:
    """What a timed-out command's stderr ends with."""
    return (f"\n[run-dat-sheesh] command timed out after {int(timeout * 1000)} ms; "
            f"its process tree was killed\n").encode()


class CommandStream(t.Generic[R]):
    """One command started for streaming, by an announcing command line (see
    :func:`app.services.prelude.sandbox_command_line`).

    :meth:`chunks` hands on its output within the caps as it arrives; once they are through,
    :attr:`result` is what the buffered call answers, with empty stdout and stderr (a
    timeout's note is the last stderr chunk). :meth:`close` kills the process tree of a
    command that did not finish, and must always be called.

    :param mark: what the command line prints first on stdout (taken off).
    :param kill: kills the command's process tree (waiting a bounded time).
    :param finish: makes the answer out of the result.
    :param outcome: run-ts/run-js: takes the runner's outcome off stderr.
    """

    def __init__(self, running: RunningCommand, *, mark: bytes, max_output: int,
                 timeout: float, kill: t.Callable[[], None],
                 finish: t.Callable[[RunResult], R], outcome: OutcomeFilter | None = None) -> None:
        self._running = running
        self._mark = mark
        self._caps = OutputCaps(max_output, keep=False)
        self._timeout = timeout
        self._kill = kill
        self._finish = finish
        # The first bytes of each stream, as sent (the exec history's previews).
        self.heads: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._outcome = outcome
        self._stop: t.Callable[[], bool] = lambda: False
        self._events = running.output(lambda: self._stop())
        self._early: list[tuple[str, bytes]] = []
        self._done = False  # finished, refused or killed: nothing left to kill
        self.result: R | None = None

    def wait_started(self) -> None:
        """Read until the command line has announced the start of the caller's script.

        :raises InvalidRequest: the prelude refused to start it (a bad cwd).
        :raises GuestUnreachable: the connection broke.
        """
        stdout = b""
        for name, data in self._events:
            if name == "stderr":
                self._early.append((name, data))
                continue
            stdout += data
            if len(stdout) >= len(self._mark):
                rest = stdout.removeprefix(self._mark)
                if rest:
                    self._early.append(("stdout", rest))
                return
        # Over before the mark: refused, timed out, or the shell died first.
        if stdout:
            self._early.append(("stdout", stdout))
        stderr = b"".join(data for name, data in self._early if name == "stderr")
        message = refusal(CommandResult(exit_code=self._running.exit_code(), stdout=stdout,
                                        stderr=stderr))
        if message is not None:
            self._done = True
            raise InvalidRequest(message)

    def chunks(self, stop: t.Callable[[], bool] | None = None) -> t.Iterator[OutputChunk]:
        """The output (after :meth:`wait_started`) until the command ends; then :attr:`result`
        is set, unless ``stop()`` (asked a few times a second) said to give up first.

        :raises GuestUnreachable: the connection broke.
        """
        if stop is not None:
            self._stop = stop
        early, self._early = self._early, []
        for name, data in itertools.chain(early, self._events):
            visible = self._visible(name, data)
            if visible:
                yield OutputChunk(name, visible)
        if self._running.stopped:
            return
        if self._outcome is not None:
            held = self._caps.take("stderr", self._outcome.flush())
            if held:
                yield OutputChunk("stderr", held)
        command = self._caps.result(self._running.exit_code(), self._running.timed_out,
                                    self._running.started)
        if command.timed_out:
            self._kill_once()
            yield OutputChunk("stderr", timeout_note(self._timeout))
        outcome = self._outcome.outcome(command) if self._outcome is not None else {}
        self._done = True
        self.result = self._finish(RunResult(command=command, outcome=outcome))

    def close(self) -> None:
        """Kill the command's process tree unless it finished; close its channel."""
        try:
            self._kill_once()
        finally:
            self._running.close()

    def _visible(self, name: str, data: bytes) -> bytes:
        if name == "stderr" and self._outcome is not None:
            data = self._outcome.feed(data)
        visible = self._caps.take(name, data)
        if len(self.heads[name]) < HEAD_BYTES:
            self.heads[name] = (self.heads[name] + visible)[:HEAD_BYTES]
        return visible

    def _kill_once(self) -> None:
        if not self._done:
            self._done = True
            self._kill()
