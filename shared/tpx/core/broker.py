"""How a broker or database address may appear in a log line: host, port and vhost, never credentials.

Deliberately free of AMQP client imports: the exchange process, whose relay speaks
AMQP through `tpx.core.relay.confirming_publisher`, loads no AMQP client library.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def address(url: str) -> str:
    """Host, port and vhost of a URL, never its credentials: this is what logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}{parts.path}" if parts.port else f"{host}{parts.path}"


def describe(exc: BaseException | None, *urls: str) -> str:
    """An error as one line, with any password from the configured URLs blanked out."""
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for url in urls:
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
    return text[:500]
