"""Operator commands' progress line (tpx.cli.progress): redrawn on a terminal, one final line when piped."""

from __future__ import annotations

import io

from tpx.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_and_cleared():
    out = Terminal()
    progress = Progress(out, interval=0)
    progress.update("  revoking… 1 token(s)")
    progress.update("  revoking… 10 token(s)")
    progress.finish("  10 token(s) revoked")
    assert out.getvalue() == ("\r  revoking… 1 token(s)\r  revoking… 10 token(s)\r" + " " * 23 + "\r"
                              "  10 token(s) revoked\n")


def test_piped_only_the_final_line_is_written():
    out = io.StringIO()
    progress = Progress(out, interval=0)
    assert not progress.due()
    progress.update("  verified 5 events")
    progress.finish()
    progress.finish("  5 token(s) revoked")
    assert out.getvalue() == "  5 token(s) revoked\n"
