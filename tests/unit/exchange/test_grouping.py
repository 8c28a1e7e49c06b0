"""tpx.exchange.grouping: what group commit and group read rely on, without a database."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from tpx.exchange.grouping import Groups


class Sessions:
    """A `session` factory standing in for a pool's acquire: numbered sessions, each recorded as opened and
    closed; while `refuse` is set, opening one raises it (a database that cannot be reached)."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.refuse: Exception | None = None

    @contextlib.asynccontextmanager
    async def __call__(self):
        if self.refuse is not None:
            raise self.refuse
        self.opened += 1
        try:
            yield self.opened
        finally:
            self.closed += 1


class Recorder:
    """A `run` that answers each item with itself, upper-cased, and records the groups it was given and
    the session each ran on. While `hold` is unset, runs wait for it (a group in flight)."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.sessions: list[int] = []
        self.tasks: list[asyncio.Task] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Condition()

    async def in_flight(self, count: int) -> None:
        """Until `count` groups have started."""
        async with self.started:
            await self.started.wait_for(lambda: len(self.groups) >= count)

    async def __call__(self, group, session) -> None:
        self.groups.append([item for item, _ in group])
        self.sessions.append(session)
        self.tasks.append(asyncio.current_task())
        async with self.started:
            self.started.notify_all()
        await self.hold.wait()
        for item, future in group:
            if item == "boom":
                raise RuntimeError("this group failed")
            if not future.done():
                future.set_result(item.upper())


async def a_in_flight(sessions: Sessions | None = None, max_group: int = 64) -> tuple[Recorder, Groups, asyncio.Future]:
    """Groups with one writer, holding the group ["a"] in flight: (its run, the groups, a's future)."""
    run = Recorder()
    groups = Groups(run, session=sessions or Sessions(), max_group=max_group, max_in_flight=1, name="test")
    run.hold.clear()
    first = groups.enqueue("a")
    await run.in_flight(1)
    return run, groups, first


async def test_items_queued_while_a_group_is_in_flight_form_the_next_group():
    run, groups, first = await a_in_flight()   # the rest arrive while "a" is in flight
    rest = [groups.enqueue(x) for x in "bcd"]
    run.hold.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert run.groups == [["a"], ["b", "c", "d"]]


async def test_items_queued_in_one_turn_of_the_loop_go_in_one_group():
    """Requests that arrive together reach the queue in the same turn: the writer the first one starts
    takes them all at its first step, rather than each starting a writer (a transaction) of its own."""
    run = Recorder()
    groups = Groups(run, session=Sessions(), max_group=64, max_in_flight=3, name="test")
    assert await asyncio.gather(*(groups.enqueue(x) for x in "abc")) == ["A", "B", "C"]
    assert run.groups == [["a", "b", "c"]]


async def test_groups_are_capped_and_writers_are_bounded():
    run = Recorder()
    groups = Groups(run, session=Sessions(), max_group=2, max_in_flight=2, name="test")
    run.hold.clear()
    futures = [groups.enqueue(x) for x in "abcde"]
    await run.in_flight(2)
    assert run.groups == [["a", "b"], ["c", "d"]]   # the cap, and a second writer for what was left; e waits
    run.hold.set()
    assert await asyncio.gather(*futures) == list("ABCDE")
    assert run.groups == [["a", "b"], ["c", "d"], ["e"]]   # taken by the first writer back


async def test_items_of_a_writer_cancelled_before_its_first_step_are_written():
    """Only a shutdown cancels a writer; one cancelled before it took its group must not strand the
    items queued for it (no other writer would start while it counted as the one gathering)."""
    run = Recorder()
    groups = Groups(run, session=Sessions(), max_group=64, max_in_flight=1, name="test")
    first = groups.enqueue("a")
    (writer,) = [task for task in asyncio.all_tasks() if task.get_name() == "test"]
    writer.cancel()
    assert await asyncio.wait_for(first, timeout=5) == "A"
    assert await asyncio.wait_for(groups.enqueue("b"), timeout=5) == "B"
    assert run.groups == [["a"], ["b"]]


async def test_an_item_queued_as_the_last_writer_finishes_is_written():
    """The writer that wrote "a" ends in the step that found the queue empty; "b", queued by a's
    waiter right after, must start a writer of its own rather than wait for one that is ending."""
    groups = Groups(Recorder(), session=Sessions(), max_group=64, max_in_flight=1, name="test")
    assert await groups.enqueue("a") == "A"
    assert await asyncio.wait_for(groups.enqueue("b"), timeout=5) == "B"


async def test_a_failed_group_fails_its_own_items_only():
    run, groups, first = await a_in_flight()
    settled, doomed = groups.enqueue("b"), groups.enqueue("boom")
    run.hold.set()
    assert await first == "A"
    assert await settled == "B"   # settled before the group failed: it keeps its answer
    with pytest.raises(RuntimeError, match="this group failed"):
        await doomed
    assert await groups.enqueue("c") == "C"   # the next group is written as usual


async def test_a_cancelled_waiter_leaves_its_group_to_finish():
    run, groups, first = await a_in_flight()
    waiting = asyncio.ensure_future(groups.enqueue("b"))
    first.cancel()   # in flight
    run.hold.set()
    assert await waiting == "B"
    assert run.groups == [["a"], ["b"]]


async def test_a_writer_goes_on_to_what_was_queued_without_a_new_task():
    """Under load no turn of the event loop passes between one group and the next: the writer that
    finished takes the queue in the same step (no task to end, no slot to free, no task to start)."""
    run, groups, first = await a_in_flight()
    rest = [groups.enqueue(x) for x in "bc"]
    run.hold.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C"]
    assert run.groups == [["a"], ["b", "c"]]
    assert run.tasks[0] is run.tasks[1]


async def test_items_queued_behind_a_cancelled_writer_are_still_written():
    run, groups, first = await a_in_flight()
    queued = groups.enqueue("b")
    run.tasks[0].cancel()   # the writer holding "a" (nothing in tpx cancels one; a shutdown would)
    with pytest.raises(BaseException):
        await first
    run.hold.set()
    assert await asyncio.wait_for(queued, timeout=5) == "B"


async def test_a_failure_nobody_reads_is_not_logged_as_never_retrieved():
    """A waiter cancelled after its group failed never reads the exception; asyncio would log it as
    "Future exception was never retrieved" when the future is collected."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        run, groups, first = await a_in_flight()
        doomed = groups.enqueue("boom")
        run.hold.set()
        assert await first == "A"
        while not doomed.done():
            await asyncio.sleep(0)
        del doomed
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_back_to_back_groups_share_one_session():
    """A writer that goes on to the next group keeps its session (its pooled connection): no release and
    acquire between groups that follow each other."""
    sessions = Sessions()
    run, groups, first = await a_in_flight(sessions)
    rest = [groups.enqueue(x) for x in "bc"]
    run.hold.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C"]
    await run.tasks[0]   # the writer, done once the queue is empty
    assert run.sessions == [1, 1]
    assert (sessions.opened, sessions.closed) == (1, 1)


async def test_a_failed_group_ends_its_session_and_the_next_group_opens_a_new_one():
    """A group that raised may have lost its connection: it is never used again."""
    sessions = Sessions()
    run, groups, first = await a_in_flight(sessions, max_group=2)
    settled, doomed, after = groups.enqueue("b"), groups.enqueue("boom"), groups.enqueue("c")
    run.hold.set()
    assert await first == "A"
    assert await settled == "B"
    with pytest.raises(RuntimeError, match="this group failed"):
        await doomed
    assert await after == "C"
    await run.tasks[0]
    assert run.groups == [["a"], ["b", "boom"], ["c"]]
    assert run.sessions == [1, 1, 2]
    assert (sessions.opened, sessions.closed) == (2, 2)


async def test_a_session_that_cannot_be_opened_fails_its_group_only():
    sessions = Sessions()
    groups = Groups(Recorder(), session=sessions, max_group=64, max_in_flight=1, name="test")
    sessions.refuse = OSError("the database is not reachable")
    with pytest.raises(OSError, match="not reachable"):
        await groups.enqueue("a")
    sessions.refuse = None
    assert await groups.enqueue("b") == "B"
    assert (sessions.opened, sessions.closed) == (1, 1)


def test_mint_writers_per_process_three_alone_one_each_when_several_share_the_database():
    from tpx.exchange.group_commit import MAX_IN_FLIGHT, writers_per_process

    assert writers_per_process(1) == MAX_IN_FLIGHT == 3
    assert [writers_per_process(workers) for workers in (2, 4, 64)] == [1, 1, 1]
