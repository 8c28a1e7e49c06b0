"""`tpx audit tail|replay|verify`: read the replayable audit stream `<prefix>.audit`.

The stream is a RabbitMQ stream queue bound to every event; it keeps events
by age and size, and any consumer can start from an offset or a time. Filters
are applied here, on the verified CloudEvent content, so the stream itself
stays one complete, hash-chained line that `verify` can check.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aio_pika

from tpx.cli.progress import Progress
from tpx.cli.settings import load_settings
from tpx.core.config import Settings
from tpx.core.events import chain
from tpx.core.times import MOMENT_SYNTAX, parse_moment

def parse_since(value: str | None) -> Any:
    """`first`, `last`, `next`, a stream offset (integer), or the command line's one time syntax
    (tpx.core.times.parse_moment: an RFC 3339 time or a duration ago such as 2h)."""
    if value is None or value in ("first", "last", "next"):
        return value or "first"
    if value.isdigit():
        return int(value)
    try:
        return parse_moment(value)
    except ValueError:
        raise SystemExit(f"tpx audit: --since {value!r} is not first/last/next, a stream offset, or "
                         f"{MOMENT_SYNTAX}") from None


@dataclass
class Filters:
    package: str | None = None
    repository: str | None = None
    types: str | None = None

    def active(self) -> bool:
        return any((self.package, self.repository, self.types))

    def match(self, event: dict[str, Any]) -> bool:
        data = event.get("data") or {}
        if self.types:
            short = event.get("type", "").removeprefix("dev.tpx.")
            if not any(fnmatch.fnmatchcase(short, t.removeprefix("dev.tpx.")) for t in self.types.split(",")):
                return False
        if self.package:
            packages = set(data.get("packages") or []) | {data.get("package")} | {
                (data.get("after") or {}).get("package"), (data.get("before") or {}).get("package")}
            if self.package not in packages:
                return False
        if self.repository:
            ci = data.get("ci") or {}
            names = {ci.get("repository"), event.get("subject") if "exchange.denied" in event.get("type", "") else None}
            if self.repository.lower() not in {n.lower() for n in names if isinstance(n, str)}:
                return False
        return True


async def read_stream(settings: Settings, since: Any, *, follow: bool, idle_timeout: float = 2.0,
                      limit: int | None = None) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Yield (stream offset, event) from `since`; stop after `idle_timeout` s without news unless following."""
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        try:
            queue = await channel.declare_queue(settings.audit_stream, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            raise SystemExit(f"tpx audit: the stream {settings.audit_stream!r} does not exist yet; it is created when "
                             "the outbox relay of any tpx service first connects") from None
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        tag = await queue.consume(inbox.put, arguments={"x-stream-offset": since})
        count = 0
        try:
            while limit is None or count < limit:
                try:
                    message = await (inbox.get() if follow else asyncio.wait_for(inbox.get(), idle_timeout))
                except asyncio.TimeoutError:
                    return
                await message.ack()
                offset = int((message.headers or {}).get("x-stream-offset", -1))
                count += 1
                yield offset, json.loads(message.body)
        finally:
            await queue.cancel(tag)


def render(event: dict[str, Any], offset: int, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"offset": offset, **event}, separators=(",", ":"), sort_keys=True)
    data = event.get("data") or {}
    ci = data.get("ci") or {}
    what = data.get("token_id") or data.get("target") or data.get("publisher_id") or event.get("subject") or ""
    detail = " ".join(filter(None, [
        ",".join(data.get("packages") or []) or data.get("package") or "",
        ci.get("repository") or "", ci.get("workflow") or "", data.get("code") or "", data.get("reason") or "",
    ]))
    return (f"{event.get('time', '')[:23]:<23}  {int(event.get('sequence', 0)):>8}  "
            f"{event.get('type', '').removeprefix('dev.tpx.'):<30}  {str(what)[:36]:<36}  {detail[:80]}")


TABLE_HEADER = f"{'time':<23}  {'sequence':>8}  {'type':<30}  {'subject':<36}  detail"


async def replay(settings: Settings, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    filters = Filters(args.package, args.repository, args.type)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    if fmt == "table":
        out(TABLE_HEADER)
    follow = args.command_name == "tail" or getattr(args, "follow", False)
    since = parse_since(args.since or ("last" if args.command_name == "tail" else "first"))
    async for offset, event in read_stream(settings, since, follow=follow, idle_timeout=args.idle_timeout,
                                           limit=args.limit):
        if filters.match(event):
            out(render(event, offset, fmt))
    return 0


async def verify(settings: Settings, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """Check the chain as the events arrive, in constant memory (tpx.core.events.chain.ChainVerifier)."""
    verifier = chain.ChainVerifier(anchor=bytes.fromhex(args.anchor) if args.anchor else None)
    progress = Progress()
    try:
        async for _, event in read_stream(settings, parse_since(args.since or "first"), follow=False,
                                          idle_timeout=args.idle_timeout, limit=args.limit):
            if verifier.feed(event) is not None:
                break
            if progress.due():
                rate = verifier.checked / max(time.monotonic() - progress.started, 1e-9)
                progress.update(f"  verified {verifier.checked:,} events (sequence {verifier.last_sequence}), "
                                f"{rate:,.0f}/s")
    finally:
        progress.finish()
    report = verifier.report()
    out(report.describe())
    return 0 if report.ok else 1


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="read and verify the audit event stream")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="tail|replay|verify")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--since", help="first, last, next, a stream offset, an RFC 3339 time, or 30m/2h/7d ago")
        parser.add_argument("--limit", type=int, help="stop after this many events")
        parser.add_argument("--idle-timeout", type=float, default=2.0,
                            help="replay/verify stop after this many seconds without a new event (default 2)")

    for name, help_text in (("tail", "follow new events live"), ("replay", "replay past events, then stop")):
        parser = commands.add_parser(name, help=help_text)
        common(parser)
        parser.add_argument("--package")
        parser.add_argument("--repository", help="owner/name (GitHub) or group/project (GitLab)")
        parser.add_argument("--type", help="event types, comma separated, globs allowed (token.*, exchange.denied)")
        parser.add_argument("--format", choices=("json", "table"), help="JSON lines (default when piped) or a table")
        if name == "replay":
            parser.add_argument("--follow", action="store_true", help="keep following after the replay")
        parser.set_defaults(audit_func=replay, command_name=name)
    verify_parser = commands.add_parser("verify", help="check the hash chain of a replayed range")
    common(verify_parser)
    verify_parser.add_argument("--anchor", help="hex chainhash of the event just before the range (else trusted)")
    verify_parser.set_defaults(audit_func=verify, command_name="verify")
    audit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        return asyncio.run(args.audit_func(settings, args, out))
    except KeyboardInterrupt:
        return 0
