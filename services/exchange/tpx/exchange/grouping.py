"""What group commit and group read share: work that arrives while a group is in flight waits for the next.

Items are queued with a future each and written by at most `max_in_flight`
writers. An item that finds a writer free starts one, which takes everything
queued (up to `max_group`) at its first step: the item itself and whatever the
same turn of the event loop queued after it (requests that arrived together),
which would otherwise each have started a writer, a transaction and a round trip
of their own. A writer that finishes a group takes what was queued meanwhile at
once, so under load it goes from one group to the next without a turn of the
event loop in between (no task to end, no slot to free in a done callback, no
new task to start; each of those waits behind every request the loop has
ready). There is no timer: a writer's first step comes one turn after its item
was queued, as it always did, so grouping never adds a wait that load did not
already cause. An item only ever joins a group that starts after it was queued.

A writer runs its groups on one session (`session()`, a pooled connection):
back-to-back groups share it, with no release and acquire in between (~90
Python calls and a task each, in asyncpg). A group that raises ends the session
(a lost connection is never used again), and the next group opens a new one.

`run(group, session)` settles each item's future; whatever it leaves unsettled
when it raises gets the exception, and so does a group whose session could not
be opened. A waiter that is cancelled cancels its future only, never the
group's work.
"""

from __future__ import annotations

import asyncio
from typing import AsyncContextManager, Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")
Session = TypeVar("Session")

Group = list[tuple[Item, "asyncio.Future[Outcome]"]]


def fail(future: asyncio.Future, exc: BaseException) -> None:
    """Settle `future` with `exc`, marked as read: its waiter may have been cancelled after it was settled
    (and then never reads it), which asyncio would log as "exception was never retrieved". Marking it here
    rather than in a done callback on every future spares a callback per item on the success path."""
    future.set_exception(exc)
    future.exception()


def _fail_unsettled(group: Group, exc: BaseException) -> None:
    for _item, future in group:
        if not future.done():
            fail(future, exc)


class Groups(Generic[Item, Outcome, Session]):
    def __init__(self, run: Callable[[Group, Session], Awaitable[None]], *,
                 session: Callable[[], AsyncContextManager[Session]], max_group: int, max_in_flight: int,
                 name: str) -> None:
        if max_group < 1 or max_in_flight < 1:
            raise ValueError("max_group and max_in_flight must be at least 1")
        self._run = run
        self._session = session
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._name = name
        self._queue: Group = []
        self._writers: set[asyncio.Task[None]] = set()
        self._gathering: asyncio.Task[None] | None = None   # started, yet to take its group
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def enqueue(self, item: Item) -> asyncio.Future[Outcome]:
        # The loop is looked up at the first item only: get_running_loop() costs a getpid() call each time.
        future: asyncio.Future[Outcome] = (self._loop or self._bind_loop()).create_future()
        self._queue.append((item, future))
        self._start_writer()
        return future

    def _start_writer(self) -> None:
        if self._queue and self._gathering is None and len(self._writers) < self._max_in_flight:
            task = asyncio.create_task(self._write(), name=self._name)
            self._gathering = task
            self._writers.add(task)
            task.add_done_callback(self._writer_done)   # also if it never ran

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._writers.discard(task)
        if self._gathering is task:   # cancelled before its first step: what it would have taken needs a writer
            self._gathering = None
            self._start_writer()

    def _take(self) -> Group:
        group, self._queue = self._queue[:self._max_group], self._queue[self._max_group:]
        return group

    async def _write(self) -> None:
        try:
            # The group is taken at the writer's first step, not when it was started: what was queued
            # in between (requests of the same turn of the loop) goes with it instead of starting
            # writers of its own.
            self._gathering = None
            group = self._take()
            while group:
                group = await self._on_one_session(group)
        finally:
            # In the same step as the empty queue was seen: an item queued from now on starts a writer
            # (a done callback would leave a turn of the loop in which it found every writer busy).
            # The loop given: without it current_task() looks the loop up, a getpid() call each time.
            self._writers.discard(asyncio.current_task(self._loop))  # type: ignore[arg-type]
            self._start_writer()   # what a cancelled writer leaves queued gets a writer of its own

    async def _on_one_session(self, group: Group) -> Group:
        """Run `group`, then each group queued by the time the one before is done, on one session, until
        the queue is empty or a group fails; return what is queued once the session is closed."""
        try:
            async with self._session() as session:
                while group:
                    self._start_writer()   # for what is left over the cap, if a writer is free
                    try:
                        await self._run(group, session)
                    except Exception as exc:  # noqa: BLE001 - every waiter gets the outcome (a cancellation: below)
                        _fail_unsettled(group, exc)
                        break   # the session ends with the group that failed: the next one opens a new one
                    group = self._take()
        except BaseException as exc:  # noqa: BLE001 - the session could not be opened or closed, or cancelled
            _fail_unsettled(group, exc)
            if not isinstance(exc, Exception):
                raise
        return self._take()
