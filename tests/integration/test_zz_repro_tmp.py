import asyncio, json, time
import pytest
from tests.integration.test_multi_replica import stack, show_logs_on_failure, Stack, COOLDOWN  # noqa
from tests.support.oidc_issuer import new_rsa_key

pytestmark = pytest.mark.integration

async def test_request_during_inflight_fetch(stack: Stack):
    repo = await stack.repo()
    await stack.refresh_cooldown_over()
    issuer = stack.issuer
    # The IdP answers slowly, with the JWKS as it was when the request came in (old keys).
    issuer.jwks_body = json.dumps(issuer.jwks()).encode()
    gate = asyncio.Event(); issuer.jwks_gate = gate
    before = issuer.jwks_requests
    primer = asyncio.create_task(stack.exchange(stack.b, repo.jwt(key=new_rsa_key())))
    while issuer.jwks_requests == before:
        await asyncio.sleep(0.01)
    new = new_rsa_key(); issuer.keys.insert(0, new)      # rotation while that fetch is in flight
    t = time.monotonic()
    a_task = asyncio.create_task(stack.exchange(stack.a, repo.jwt(key=new)))
    await asyncio.sleep(0.1)
    issuer.jwks_body = None; issuer.jwks_gate = None; gate.set()   # the in-flight fetch returns the old set
    r = await a_task
    print(f"\nREPRO A's first exchange with the new key (asked while a fetch was in flight): {r.status_code} {r.json().get('code')} after {time.monotonic()-t:.2f}s")
    print("REPRO JWKS fetches since:", issuer.jwks_requests - before)
    await primer
    await asyncio.sleep(2)
    print("REPRO 2 s later, fetches since:", issuer.jwks_requests - before)
