"""What the routes need at run time, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from tpx.core.config import Settings
from tpx.core.db.listener import Listener
from tpx.core.relay.signal import OutboxSignal

from tpx.exchange.auth import Credentials
from tpx.exchange.candidates import CandidateCache
from tpx.exchange.group_commit import GroupCommit
from tpx.exchange.group_read import GroupRead
from tpx.exchange.keycache import KeyCache
from tpx.exchange.ratelimit import RateLimits
from tpx.exchange.token_format import TokenFormat


@dataclass
class ServiceContext:
    settings: Settings
    pool: asyncpg.Pool
    keycache: KeyCache
    outbox_signal: OutboxSignal
    admin: Credentials
    introspection: Credentials
    limits: RateLimits
    candidates: CandidateCache
    listener: Listener
    group_commit: GroupCommit
    token_reads: GroupRead[bytes, asyncpg.Record]   # introspection's lookups, by tpx.core.tokens.lookup_key
    token_format: TokenFormat
    draining: bool = False


def context(request: Request) -> ServiceContext:
    return request.app.state.tpx
