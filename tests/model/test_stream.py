"""The stream object (model/stream.py): events, then the result; close, errors, laziness; and the model's and
the engine's streams built on it."""
from __future__ import annotations

from collections.abc import Generator

import pytest
from tests.support.tiny_checkpoint import Q_THREE

from pixellm_ros.model import Stream, TargetEvent, TextEvent, generate, stream, streaming


def counting(n: int, log: list[str], fail_at: int | None = None) -> Generator[int, None, str]:
    """Yields 0..n-1 and returns "done"; records when it starts and when its `finally` runs."""
    log.append("started")
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at {i}")
            yield i
        return "done"
    finally:
        log.append("finally")


def test_events_then_result():
    log: list[str] = []
    s = Stream(counting(3, log))
    with pytest.raises(RuntimeError, match="not exhausted yet"):
        s.result
    assert next(s) == 0
    with pytest.raises(RuntimeError, match="not exhausted yet"):
        s.result
    assert list(s) == [1, 2] and s.result == "done" and log == ["started", "finally"]
    assert list(s) == [] and s.result == "done"  # an ended stream stays ended, its result kept


def test_run_drains_and_returns_the_result():
    log: list[str] = []
    s = Stream(counting(4, log))
    assert next(s) == 0 and s.run() == "done" and s.result == "done"


def test_streaming_is_lazy():
    log: list[str] = []
    make = streaming(counting)
    s = make(2, log)
    assert isinstance(s, Stream) and log == []  # nothing runs before the first event is asked for
    assert s.run() == "done" and log == ["started", "finally"]
    assert make.__name__ == "counting"


def test_close_mid_stream_runs_cleanup_and_leaves_no_result():
    log: list[str] = []
    s = Stream(counting(5, log))
    assert next(s) == 0
    s.close()
    assert log == ["started", "finally"]  # locks and caches held by the generator are given back
    assert list(s) == []
    with pytest.raises(RuntimeError, match="closed before its end"):
        s.result
    done = Stream(counting(1, []))
    done.run()
    done.close()  # closing an ended stream keeps its result
    assert done.result == "done"


def test_an_exception_inside_propagates():
    log: list[str] = []
    s = Stream(counting(5, log, fail_at=2))
    assert next(s) == 0 and next(s) == 1
    with pytest.raises(ValueError, match="failed at 2"):
        next(s)
    assert log == ["started", "finally"] and list(s) == []
    with pytest.raises(RuntimeError, match="raised an exception"):
        s.result
    with pytest.raises(ValueError):
        Stream(counting(5, [], fail_at=0)).run()


def test_yield_from_a_stream_gives_its_result():
    """A wrapper generator (e.g. a fault injector around Engine.stream) can pass the events and the result on."""
    def wrapper(inner: Stream[int, str]) -> Generator[int, None, str]:
        return (yield from inner)

    assert Stream(wrapper(Stream(counting(3, [])))).run() == "done"


def test_model_stream_is_a_stream_of_the_generation(taught):
    args = (taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE)
    s = stream(*args)
    assert isinstance(s, Stream)
    events = list(s)
    g = s.result
    assert g.token_ids == generate(*args).token_ids == [e.token_id for e in events if isinstance(e, TextEvent)]
    targets = [e.target for e in events if isinstance(e, TargetEvent)]
    assert len(targets) == len(g.targets) == 3 and all(a is b for a, b in zip(targets, g.targets))
    abandoned = stream(*args)
    next(abandoned)
    abandoned.close()  # the shared image prefix is untouched: the next answer is the same
    assert generate(*args).token_ids == g.token_ids
