"""A stream of events that ends in a result: the one place for the generator-return pattern.

Answering yields events (text pieces, targets) and ends in one object (a Generation, an engine Result).
A Python generator can do both, but its return value only arrives as `StopIteration.value`, which every
consumer would otherwise catch by hand. `Stream` keeps it: iterate for the events, then read `.result`.
"""
from __future__ import annotations

import functools
from typing import Callable, Generator, Generic, ParamSpec, TypeVar

E = TypeVar("E")
R = TypeVar("R")
P = ParamSpec("P")


class Stream(Generic[E, R]):
    """Events of a running computation, then its result.

    Lazy: nothing runs before the first event is asked for. Iterating runs it; `result` is there once the
    events are exhausted; `run()` drains the events and returns it. An exception inside propagates to the
    caller of `next` (the stream then has no result). `close()` abandons it mid-way: the generator's
    `finally` blocks and context managers run (locks, decoder caches are given back) and there is no result.
    It is also an iterator in the generator sense: the last `next` raises StopIteration carrying the result,
    so `yield from stream` gives the result too.
    """

    def __init__(self, events: Generator[E, None, R]) -> None:
        self._events = events
        self._state = "running"  # -> "done" (result kept), "failed" (raised), "closed" (abandoned)
        self._result: R | None = None

    def __iter__(self) -> Stream[E, R]:
        return self

    def __next__(self) -> E:
        if self._state != "running":
            raise StopIteration
        try:
            return next(self._events)
        except StopIteration as stop:
            self._result, self._state = stop.value, "done"
            raise
        except BaseException:
            self._state = "failed"
            raise

    @property
    def result(self) -> R:
        """The result; a RuntimeError saying why when there is none (yet)."""
        if self._state == "done":
            return self._result  # type: ignore[return-value]
        why = {"running": "its events are not exhausted yet (iterate over them, or call run())",
               "failed": "it raised an exception before its end",
               "closed": "it was closed before its end"}[self._state]
        raise RuntimeError(f"the stream has no result: {why}")

    def run(self) -> R:
        """Drain the remaining events and return the result."""
        for _ in self:
            pass
        return self.result

    def close(self) -> None:
        """Abandon the stream before its end (no result); nothing happens once it has ended."""
        if self._state == "running":
            self._state = "closed"
            self._events.close()


def streaming(fn: Callable[P, Generator[E, None, R]]) -> Callable[P, Stream[E, R]]:
    """Make a generator function return a `Stream` of its events and its return value."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Stream[E, R]:
        return Stream(fn(*args, **kwargs))

    return wrapper
