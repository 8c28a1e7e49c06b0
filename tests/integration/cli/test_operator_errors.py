"""Operator mistakes and outages end `tpx` with one sentence and a documented exit status, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tpx(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TPX_")}
    return subprocess.run([sys.executable, "-m", "tpx.cli", *args], env={**environment, **env},
                          capture_output=True, text=True, timeout=60)


def one_sentence(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_admin_token_file_that_is_not_there():
    result = tpx("issuers", "list", TPX_ADMIN_TOKEN_FILE="/nonexistent/admin-token")
    assert result.returncode == 4
    assert "cannot read /nonexistent/admin-token" in one_sentence(result)


def test_the_service_not_answering():
    result = tpx("issuers", "list", TPX_URL=f"http://127.0.0.1:{closed_port()}", TPX_ADMIN_TOKEN="x" * 24)
    assert result.returncode == 3
    assert "cannot reach" in one_sentence(result)


def test_audit_verify_with_the_broker_down_is_not_a_tampered_chain():
    result = tpx("audit", "verify", TPX_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    assert result.returncode == 3   # tampered is 1
    assert "the broker (RabbitMQ) did not answer" in one_sentence(result)


def test_version():
    result = tpx("--version")
    assert result.returncode == 0 and result.stdout.startswith("tpx ")
