"""What the clients were told, against what the database and the event stream say.

The guarantees checked here are the ones a fault must never break:

- no double mint: no ID token (run_id) has more than one token row;
- no lost token: every token answered 200 is in the database, and a token in
  the database whose answer never arrived is counted (only a process killed
  with the answer in flight may leave one; never a 503, which promises the ID
  token is unspent);
- no lost event: every token row has exactly one `token.issued` event (by
  event id; a redelivery repeats the id), and no event names a token that
  does not exist;
- the audit stream's hash chain verifies (`tpx audit verify`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.faults.load import Load
from tests.support.processes import poll, run_cli
from tests.support.stack import ServiceStack

ISSUED = "dev.tpx.token.issued"


@dataclass
class Ledger:
    answered_200: int
    rows: int
    spent_unanswered: list[str]  # run_ids minted whose client got no 200
    events: int
    last_event_at: float  # time.monotonic() when the last of these token.issued events arrived
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"answered 200": self.answered_200, "token rows": self.rows, "token.issued events": self.events,
                "spent without a 200": len(self.spent_unanswered)}


async def reconcile(stack: ServiceStack, load: Load, *, may_spend_unanswered: int = 0,
                    event_timeout: float = 60.0) -> Ledger:
    """Compare `load`'s answers with the token rows and the token.issued events; the problems found."""
    rows = await stack.db.fetch("SELECT id::text AS id, ci->>'run_id' AS run_id FROM tokens WHERE repository_key = $1",
                                load.identity.repository_key)
    by_run = {token.run_id: token for token in load.tokens}
    problems: list[str] = []

    minted = Counter(row["run_id"] for row in rows)
    doubles = [run_id for run_id, count in minted.items() if count > 1]
    if doubles:
        problems.append(f"{len(doubles)} ID tokens minted more than once: {doubles[:5]}")
    row_ids = {row["id"] for row in rows}
    answered = {token.token_id for token in load.tokens if token.succeeded}
    lost = answered - row_ids
    if lost:
        problems.append(f"{len(lost)} tokens answered 200 are not in the database: {sorted(lost)[:5]}")
    unanswered = [row["run_id"] for row in rows if row["id"] not in answered]
    told_unspent = [run_id for run_id in unanswered
                    if by_run.get(run_id) and by_run[run_id].final and by_run[run_id].final.status == 503]
    if told_unspent:
        problems.append(f"{len(told_unspent)} ID tokens were answered 503 (unspent, retry) although their token was "
                        f"committed: {told_unspent[:5]}")
    if len(unanswered) > may_spend_unanswered:
        histories = [[(a.replica, a.label, a.detail) for a in by_run[r].attempts] if r in by_run else r
                     for r in unanswered[:3]]
        problems.append(f"{len(unanswered)} tokens were minted but never answered 200 (at most "
                        f"{may_spend_unanswered} allowed here); what their clients heard: {histories}")

    async def all_events() -> bool:
        return row_ids <= _issued(stack).keys()

    try:
        await poll(all_events, f"a token.issued event for each of {len(row_ids)} tokens", event_timeout,
                   alive=stack.processes.values(), interval=0.1)
    except AssertionError as exc:
        missing = row_ids - _issued(stack).keys()
        problems.append(f"{len(missing)} tokens have no token.issued event ({exc})")
    issued = _issued(stack)
    ours = {token_id: ids for token_id, ids in issued.items() if token_id in row_ids}
    repeated = {token_id: ids for token_id, ids in ours.items() if len(ids) > 1}
    if repeated:
        problems.append(f"{len(repeated)} tokens have more than one token.issued event")
    identity_events = {e["data"]["token_id"] for e in stack.events.bodies(ISSUED)
                       if (e["data"].get("ci") or {}).get("repository", "").lower() == load.identity.repository_key}
    phantom = identity_events - row_ids
    if phantom:
        problems.append(f"{len(phantom)} token.issued events name tokens that are not in the database")
    arrivals = [stack.events.arrived[event_id] for ids in ours.values() for event_id in ids]
    last_event_at = max(arrivals, default=load.stopped_at)
    return Ledger(len(answered), len(rows), unanswered, len(ours), last_event_at, problems)


def _issued(stack: ServiceStack) -> dict[str, set[str]]:
    """token id -> the distinct event ids of its token.issued events."""
    found: dict[str, set[str]] = {}
    for event in stack.events.bodies(ISSUED):
        found.setdefault(event["data"]["token_id"], set()).add(event["id"])
    return found


async def audit_chain_verifies(stack: ServiceStack, amqp_url: str) -> str:
    """Run `tpx audit verify` over the whole stream; its report (fails the caller when the chain breaks)."""
    code, output = await run_cli(["audit", "verify", "--idle-timeout", "3"], {
        **stack.env, "TPX_AMQP_URL": amqp_url, "TPX_LOG_LEVEL": "warning"}, timeout=300)
    assert code == 0, f"tpx audit verify failed ({code}):\n{output}"
    return output.strip().splitlines()[-1] if output.strip() else ""
