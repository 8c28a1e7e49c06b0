"""The token-format gate's answer when its check cannot tell (the database's own answers: integration)."""

from __future__ import annotations

import asyncpg

from tpx.core import tokens
from tpx.exchange.token_format import TokenFormat


class Answers:
    """Stands in for the pool: answers `first_format_readers`' count, or raises."""

    def __init__(self, *answers):
        self.answers = list(answers)

    async def fetchval(self, *_args, **_kwargs):
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_a_check_that_fails_falls_back_to_the_first_format():
    token_format = TokenFormat()
    await token_format.check(Answers(0))
    await token_format.check(Answers(0))
    assert token_format.time_stamped
    await token_format.check(Answers(asyncpg.InsufficientPrivilegeError("permission denied")))
    assert not token_format.time_stamped
    assert tokens.minted_second(token_format.generate()) is None


async def test_while_the_database_is_away_the_last_answer_stands():
    token_format = TokenFormat()
    await token_format.check(Answers(0))
    await token_format.check(Answers(0))
    await token_format.check(Answers(ConnectionRefusedError()))
    assert token_format.time_stamped
