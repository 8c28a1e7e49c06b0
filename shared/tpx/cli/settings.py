"""Settings for a command: read once from the environment; a bad value ends the command with one sentence."""

from __future__ import annotations

import sys

from tpx.core.config import ConfigError, Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"tpx: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
