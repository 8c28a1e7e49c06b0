"""Configuration from the environment: defaults, _FILE secrets, and errors that name the variable."""

from __future__ import annotations

import pytest

from tpx.core.config import ConfigError, Settings

GOOD_TOKEN = "a-long-admin-credential-0123456789"


def test_defaults_match_the_contract():
    s = Settings.from_env({})
    assert s.database_url == "postgresql://localhost/tpx"
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.amqp_prefix == "tpx" and s.audience == "tpx"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (s.token_ttl_seconds, s.token_ttl_max_seconds, s.leeway_seconds) == (1800, 21600, 60)
    assert s.insecure_loopback_issuers is False
    assert s.log_format == "json"
    assert s.admin_tokens == () and s.introspection_tokens == ()


def test_values_are_read():
    s = Settings.from_env({
        "TPX_PORT": "9000", "TPX_ADMIN_TOKENS": f"{GOOD_TOKEN}, {GOOD_TOKEN}-2", "TPX_INSECURE_LOOPBACK_ISSUERS": "1",
        "TPX_LOG_FORMAT": "console", "TPX_AMQP_PREFIX": "tpx-prod",
    })
    assert s.port == 9000
    assert s.admin_tokens == (GOOD_TOKEN, f"{GOOD_TOKEN}-2")
    assert s.insecure_loopback_issuers is True
    assert s.log_format == "console" and s.events_exchange == "tpx-prod.events"


def test_secret_from_file(tmp_path):
    path = tmp_path / "admin"
    path.write_text(GOOD_TOKEN + "\n")
    assert Settings.from_env({"TPX_ADMIN_TOKENS_FILE": str(path)}).admin_tokens == (GOOD_TOKEN,)
    db = tmp_path / "db"
    db.write_text("postgresql://u:p@db/tpx")
    assert Settings.from_env({"TPX_DATABASE_URL_FILE": str(db)}).database_url == "postgresql://u:p@db/tpx"


@pytest.mark.parametrize(("env", "named"), [
    ({"TPX_PORT": "eighty"}, "TPX_PORT"),
    ({"TPX_PORT": "70000"}, "TPX_PORT"),
    ({"TPX_TOKEN_TTL_SECONDS": "5"}, "TPX_TOKEN_TTL_SECONDS"),
    ({"TPX_TOKEN_TTL_SECONDS": "30000"}, "TPX_TOKEN_TTL_SECONDS"),
    ({"TPX_LOG_FORMAT": "xml"}, "TPX_LOG_FORMAT"),
    ({"TPX_INSECURE_LOOPBACK_ISSUERS": "maybe"}, "TPX_INSECURE_LOOPBACK_ISSUERS"),
    ({"TPX_DATABASE_URL": "mysql://x"}, "TPX_DATABASE_URL"),
    ({"TPX_AMQP_URL": "http://x"}, "TPX_AMQP_URL"),
    ({"TPX_AMQP_PREFIX": "has space"}, "TPX_AMQP_PREFIX"),
    ({"TPX_ADMIN_TOKENS": "short"}, "TPX_ADMIN_TOKENS"),
    ({"TPX_ADMIN_TOKENS_FILE": "/nonexistent/secret"}, "TPX_ADMIN_TOKENS_FILE"),
    ({"TPX_ADMIN_TOKENS_FILE": "/etc/hostname", "TPX_ADMIN_TOKENS": GOOD_TOKEN}, "TPX_ADMIN_TOKENS"),
])
def test_errors_name_the_variable(env, named):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert named in str(error.value)


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"TPX_DATABASE_URL": "mysql://user:hunter2@db"})
    assert "hunter2" not in str(error.value)
