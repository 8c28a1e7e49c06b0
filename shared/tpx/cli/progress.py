"""A long-running operator command's progress: one line on a terminal, redrawn in place."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one stderr line at most every `interval` seconds, on a terminal only; piped output (CI
    logs, files) gets just what `finish` says, so it is not flooded with carriage returns."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.5) -> None:
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty()
        self._interval = interval
        self._shown = float("-inf")
        self._width = 0
        self.started = time.monotonic()

    def due(self) -> bool:
        """Whether `update` would redraw now (so a caller in a tight loop builds the text only then)."""
        return self._terminal and time.monotonic() - self._shown >= self._interval

    def update(self, text: str) -> None:
        if self.due():
            self._shown = time.monotonic()
            self._width = max(self._width, len(text))
            self._stream.write("\r" + text.ljust(self._width))
            self._stream.flush()

    def finish(self, text: str | None = None) -> None:
        """Clear the line (on a terminal) and leave `text`, if any, on a line of its own."""
        if self._terminal and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
        if text:
            self._stream.write(text + "\n")
        self._stream.flush()
