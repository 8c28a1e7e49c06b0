"""Settings from the environment (api.md section 6), validated once at start.

A bad value stops the process with a message naming the variable and what it
accepts, rather than failing later on a request. Secrets may be given as
`<NAME>_FILE`, the way container platforms mount them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tpx.core import tokens

SECRET_VARIABLES = ("TPX_DATABASE_URL", "TPX_AMQP_URL", "TPX_ADMIN_TOKENS", "TPX_INTROSPECTION_TOKENS")
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MIN_CREDENTIAL_LENGTH = 16


class ConfigError(Exception):
    """A configuration variable is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://localhost/tpx"
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    amqp_prefix: str = "tpx"
    audience: str = "tpx"
    admin_tokens: tuple[str, ...] = ()
    introspection_tokens: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    token_ttl_seconds: int = 1800
    token_ttl_max_seconds: int = 21600
    leeway_seconds: int = 60
    insecure_loopback_issuers: bool = False
    log_format: str = "json"
    log_level: str = "info"
    max_body_bytes: int = 64 * 1024
    db_pool_min: int = 2
    db_pool_max: int = 10
    relay_poll_seconds: float = 0.5
    keys_reload_seconds: float = 30.0
    keys_max_staleness_seconds: int = 86400
    keys_wait_seconds: float = 2.0
    jwks_refresh_seconds: int = 900
    jwks_refresh_cooldown_seconds: float = 10.0
    jwks_fetch_timeout_seconds: float = 10.0
    revoker_sweep_seconds: float = 30.0
    token_retention_seconds: int = 30 * 86400
    rate_failed_per_minute: int = 60
    rate_publisher_per_minute: int = 120
    trusted_proxies: tuple[str, ...] = ()
    drain_seconds: float = 0.0
    ops_port: int = 9000
    # The exchange: /metrics and the detailed /readyz on ops_port instead of its public port.
    ops_separate: bool = False
    workers: int = 1
    audit_max_age: str = "365D"
    audit_max_bytes: int = 20 * 1024**3

    @property
    def events_exchange(self) -> str:
        return f"{self.amqp_prefix}.events"

    @property
    def audit_stream(self) -> str:
        return f"{self.amqp_prefix}.audit"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = _Reader(os.environ if environ is None else environ)
        settings = cls(
            database_url=env.text("TPX_DATABASE_URL", cls.database_url, pattern=r"postgres(ql)?://.*",
                                  accepts="a postgresql:// URL"),
            amqp_url=env.text("TPX_AMQP_URL", cls.amqp_url, pattern=r"amqps?://.*", accepts="an amqp:// URL"),
            amqp_prefix=env.text("TPX_AMQP_PREFIX", cls.amqp_prefix, pattern=_PREFIX_RE.pattern,
                                 accepts="letters, digits, '.', '_' and '-'"),
            audience=env.text("TPX_AUDIENCE", cls.audience, pattern=r"[\x21-\x7e]{1,255}",
                              accepts="a non-empty printable ASCII string"),
            admin_tokens=env.credentials("TPX_ADMIN_TOKENS"),
            introspection_tokens=env.credentials("TPX_INTROSPECTION_TOKENS"),
            host=env.text("TPX_HOST", cls.host, pattern=r"[A-Za-z0-9.:\[\]-]{1,255}", accepts="a host name or address"),
            port=env.integer("TPX_PORT", cls.port, 0, 65535),
            token_ttl_seconds=env.integer("TPX_TOKEN_TTL_SECONDS", cls.token_ttl_seconds, 60, 86400),
            token_ttl_max_seconds=env.integer("TPX_TOKEN_TTL_MAX_SECONDS", cls.token_ttl_max_seconds, 60,
                                              tokens.MAX_LIFETIME_SECONDS),
            leeway_seconds=env.integer("TPX_LEEWAY_SECONDS", cls.leeway_seconds, 0, 300),
            insecure_loopback_issuers=env.boolean("TPX_INSECURE_LOOPBACK_ISSUERS", False),
            ops_separate=env.boolean("TPX_OPS_SEPARATE", False),
            log_format=env.choice("TPX_LOG_FORMAT", cls.log_format, ("json", "console")),
            log_level=env.choice("TPX_LOG_LEVEL", cls.log_level, ("debug", "info", "warning", "error")),
            max_body_bytes=env.integer("TPX_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 1024 * 1024),
            db_pool_min=env.integer("TPX_DB_POOL_MIN", cls.db_pool_min, 1, 200),
            db_pool_max=env.integer("TPX_DB_POOL_MAX", cls.db_pool_max, 1, 200),
            relay_poll_seconds=env.number("TPX_RELAY_POLL_SECONDS", cls.relay_poll_seconds, 0.01, 60),
            keys_reload_seconds=env.number("TPX_KEYS_RELOAD_SECONDS", cls.keys_reload_seconds, 1, 3600),
            keys_max_staleness_seconds=env.integer("TPX_KEYS_MAX_STALENESS_SECONDS", cls.keys_max_staleness_seconds,
                                                   60, 30 * 86400),
            keys_wait_seconds=env.number("TPX_KEYS_WAIT_SECONDS", cls.keys_wait_seconds, 0, 10),
            jwks_refresh_seconds=env.integer("TPX_JWKS_REFRESH_SECONDS", cls.jwks_refresh_seconds, 300, 3600),
            jwks_refresh_cooldown_seconds=env.number("TPX_JWKS_REFRESH_COOLDOWN_SECONDS",
                                                     cls.jwks_refresh_cooldown_seconds, 0.1, 600),
            jwks_fetch_timeout_seconds=env.number("TPX_JWKS_FETCH_TIMEOUT_SECONDS", cls.jwks_fetch_timeout_seconds,
                                                  0.1, 60),
            revoker_sweep_seconds=env.number("TPX_REVOKER_SWEEP_SECONDS", cls.revoker_sweep_seconds, 0.05, 3600),
            rate_failed_per_minute=env.integer("TPX_RATE_FAILED_PER_MINUTE", cls.rate_failed_per_minute, 0, 1_000_000),
            rate_publisher_per_minute=env.integer("TPX_RATE_PUBLISHER_PER_MINUTE", cls.rate_publisher_per_minute, 0,
                                                  1_000_000),
            trusted_proxies=env.networks("TPX_TRUSTED_PROXIES"),
            drain_seconds=env.number("TPX_DRAIN_SECONDS", cls.drain_seconds, 0, 120),
            ops_port=env.integer("TPX_OPS_PORT", cls.ops_port, 0, 65535),
            workers=env.integer("TPX_WORKERS", cls.workers, 1, 64),
            audit_max_age=env.text("TPX_AUDIT_MAX_AGE", cls.audit_max_age, pattern=r"[1-9][0-9]{0,5}[YMDhms]",
                                   accepts="a RabbitMQ stream age such as 365D, 12M or 48h"),
            audit_max_bytes=env.integer("TPX_AUDIT_MAX_BYTES", cls.audit_max_bytes, 1024**2, 2**50),
            token_retention_seconds=env.integer("TPX_TOKEN_RETENTION_SECONDS", cls.token_retention_seconds,
                                                3600, 10 * 365 * 86400),
        )
        if settings.token_ttl_seconds > settings.token_ttl_max_seconds:
            raise ConfigError(
                f"TPX_TOKEN_TTL_SECONDS ({settings.token_ttl_seconds}) is larger than TPX_TOKEN_TTL_MAX_SECONDS "
                f"({settings.token_ttl_max_seconds}); lower the first or raise the second"
            )
        if settings.db_pool_min > settings.db_pool_max:
            raise ConfigError("TPX_DB_POOL_MIN is larger than TPX_DB_POOL_MAX; make it smaller or equal")
        return settings


class _Reader:
    """Reads one variable at a time, resolving `<NAME>_FILE` for secrets."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        file_name = f"{name}_FILE"
        if name in SECRET_VARIABLES and self.environ.get(file_name):
            if self.environ.get(name):
                raise ConfigError(f"both {name} and {file_name} are set; set only one of them")
            path = Path(self.environ[file_name])
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{file_name} points to {str(path)!r}, which cannot be read: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{file_name} points to {str(path)!r}, which is not UTF-8 text") from None
        value = self.environ.get(name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str, *, pattern: str, accepts: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(pattern, value, flags=re.DOTALL):
            shown = "<hidden>" if name in SECRET_VARIABLES else repr(value[:80])
            raise ConfigError(f"{name} is {shown}; it must be {accepts}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"-?[0-9]{1,12}", value.strip()):
            raise ConfigError(f"{name} is {value[:40]!r}; it must be a whole number between {low} and {high}")
        number = int(value)
        if not low <= number <= high:
            raise ConfigError(f"{name} is {number}; it must be between {low} and {high}")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} is {value[:40]!r}; it must be a number between {low} and {high}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name} is {number}; it must be between {low} and {high}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} is {value[:40]!r}; it must be 1 or 0 (true/false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise ConfigError(f"{name} is {value[:40]!r}; it must be one of: {', '.join(choices)}")
        return value.lower()

    def networks(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        import ipaddress

        networks = []
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise ConfigError(f"{name} holds {part.strip()[:60]!r}, which is not an IP address or CIDR network "
                                  "(e.g. 10.0.0.0/8)") from None
        return tuple(networks)

    def credentials(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        tokens = tuple(part.strip() for part in value.split(",") if part.strip())
        for token in tokens:
            if len(token) < MIN_CREDENTIAL_LENGTH or not re.fullmatch(r"[\x21-\x7e]+", token):
                raise ConfigError(
                    f"{name} holds a credential that is shorter than {MIN_CREDENTIAL_LENGTH} characters or not "
                    f"printable ASCII; use long random values (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
        return tokens
