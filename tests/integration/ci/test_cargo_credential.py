"""`tpx cargo-credential` speaking cargo's credential-provider protocol (v1) over a subprocess's stdin/stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from tpx.core import tokens
from tests.support.actions import ActionsTokenEndpoint
from tests.support.api import introspect

pytestmark = pytest.mark.integration


class Cargo:
    """Plays cargo's side: spawn with --cargo-plugin, read the hello, then one JSON line per request."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, module_args: list[str], env: dict[str, str]) -> "Cargo":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *module_args, "--cargo-plugin",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def read(self) -> Any:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.endswith(b"\n"), f"no complete line from the provider: {line!r}"
        return json.loads(line)

    async def request(self, message: dict[str, Any]) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def close(self) -> tuple[int, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        rest, stderr = await asyncio.wait_for(self.process.communicate(), 60)
        assert rest == b"", f"unexpected output after the last response: {rest!r}"
        return self.process.returncode, stderr.decode()


def publish(args: list[str], name: str = "demo") -> dict[str, Any]:
    return {"v": 1, "kind": "get", "operation": "publish", "name": name, "vers": "0.1.0", "cksum": "ab" * 32,
            "registry": {"index-url": "sparse+https://registry.example/index/", "name": "example"}, "args": args}


def plain(kind: str, args: list[str], **extra: Any) -> dict[str, Any]:
    return {"v": 1, "kind": kind, "registry": {"index-url": "sparse+https://registry.example/index/"},
            "args": args, **extra}


def github_env(actions: ActionsTokenEndpoint) -> dict[str, str]:
    env = actions.env("unused")
    del env["TPX_URL"]  # the URL comes from the provider's configured args
    return env


async def test_publish_read_login_logout(repo, actions, exchange_app, client):
    publisher = await repo.add_publisher()
    args = ["--url", exchange_app.state.url]
    cargo = await Cargo.start(["tpx.ci.cargo_credential"], github_env(actions))
    assert await cargo.read() == {"v": [1]}

    answer = await cargo.request(publish(args, name=publisher["package"]))
    assert set(answer) == {"Ok"}, answer
    ok = answer["Ok"]
    assert ok == {"kind": "get", "token": ok["token"], "cache": "never", "operation_independent": False}
    token = ok["token"]
    assert tokens.is_well_formed(token)
    assert (await introspect(client, token))["active"] is True

    for operation in ("read", "yank", "owners"):
        refused = await cargo.request({**plain("get", args), "operation": operation})
        assert refused["Err"]["kind"] == "operation-not-supported", refused
    login = await cargo.request(plain("login", args, token="whatever"))
    assert login["Err"]["kind"] == "operation-not-supported"
    unknown = await cargo.request(plain("rotate", args))
    assert unknown["Err"]["kind"] == "other" and "rotate" in unknown["Err"]["message"]

    assert await cargo.request(plain("logout", args)) == {"Ok": {"kind": "logout"}}
    assert (await introspect(client, token)) == {"active": False}
    nothing = await cargo.request(plain("logout", args))
    assert nothing["Err"]["kind"] == "not-found"

    code, stderr = await cargo.close()
    assert code == 0
    assert token not in stderr
    assert all(jwt not in stderr for jwt in actions.issued)


async def test_logout_revokes_tpx_token_from_the_environment(repo, exchange_app, client):
    await repo.add_publisher()
    token = (await client.post("/v1/exchange", json={"jwt": repo.token()})).json()["token"]
    cargo = await Cargo.start(["tpx.ci", "cargo-credential"],
                              {"TPX_URL": exchange_app.state.url, "TPX_TOKEN": token})
    assert await cargo.read() == {"v": [1]}
    assert await cargo.request(plain("logout", ["cargo-credential"])) == {"Ok": {"kind": "logout"}}
    assert (await introspect(client, token)) == {"active": False}
    code, stderr = await cargo.close()
    assert code == 0 and token not in stderr


async def test_denied_publish_is_an_error_with_the_reason_and_claims(repo, actions, exchange_app):
    await repo.add_publisher(environments=["release"])
    actions.claims = {"environment": "prod"}
    cargo = await Cargo.start(["tpx.ci.cargo_credential"], github_env(actions))
    assert await cargo.read() == {"v": [1]}
    answer = await cargo.request(publish(["--url", exchange_app.state.url]))
    error = answer["Err"]
    assert error["kind"] == "other"
    assert "no_matching_publisher" in error["message"]
    causes = "\n".join(error["caused-by"])
    assert "detail: no trusted publisher" in causes
    assert "hint: " in causes
    assert "environment: prod" in causes
    assert actions.issued[0] not in json.dumps(answer)
    code, stderr = await cargo.close()
    assert code == 0
    assert actions.issued[0] not in stderr


async def test_bad_lines_get_answers_not_a_crash(exchange_app):
    cargo = await Cargo.start(["tpx.ci.cargo_credential"], {"TPX_URL": exchange_app.state.url})
    assert await cargo.read() == {"v": [1]}
    assert cargo.process.stdin is not None
    cargo.process.stdin.write(b"{not json\n")
    assert (await cargo.read())["Err"]["kind"] == "other"
    assert (await cargo.request({"v": 2, "kind": "get"}))["Err"]["kind"] == "other"
    outside_ci = await cargo.request(publish([]))
    assert outside_ci["Err"]["kind"] == "other"
    assert "not running in GitHub Actions" in outside_ci["Err"]["message"]
    code, _ = await cargo.close()
    assert code == 0
