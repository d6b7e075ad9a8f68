"""Stop sequences, applied the same way to a whole answer and to a stream of pieces.

The engine feeds every row's decoded text through its own filter as tokens arrive, so a row
ends (and frees its batch slot) at the step its stop sequence appears, not at ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopSequenceFilter:
    """Strip and cut generated text at stop sequences, the same way whole or streamed.

    Leading whitespace is dropped, trailing whitespace is held back until more text follows
    (and dropped at the end), and the text stops before the first stop sequence.  A tail that
    could still become a stop sequence is held back, so no stop text is ever emitted, however
    the pieces are split.  Feed pieces with :meth:`feed`, then call :meth:`finish` once.
    """

    def __init__(self, stop: Sequence[str] | None = None) -> None:
        if isinstance(stop, str):
            raise ValueError("stop must be a list of strings, not one string")
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""
        self.started = False
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Take the next generated piece; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self.pending += piece
        if not self.started:
            self.pending = self.pending.lstrip()
            if not self.pending:
                return ""
            self.started = True
        cuts = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if cuts:
            out = self.pending[: min(cuts)].rstrip()
            self.pending = ""
            self.stopped = True
            return out
        hold = 0
        for s in self.stop:  # longest suffix that is a proper prefix of a stop sequence
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        head = self.pending[: len(self.pending) - hold]
        hold += len(head) - len(head.rstrip())
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def finish(self) -> str:
        """The held-back text that turned out to be safe (right-stripped)."""
        out = "" if self.stopped else self.pending.rstrip()
        self.pending = ""
        return out

    def clean(self, text: str) -> str:
        """The whole text at once: what feeding it in any pieces would emit in total."""
        return self.feed(text) + self.finish()
