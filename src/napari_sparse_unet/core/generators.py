"""Driving the engine's generators: training and prediction yield small events and return a result.

Closing a generator at a ``yield`` is how work is cancelled everywhere (the
trainer then keeps its best model), so the helpers here always close what they
drive, also when the caller's callback raises (e.g. Ctrl-C in a progress bar).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

Event = TypeVar("Event")
Result = TypeVar("Result")


def _never() -> bool:
    return False


def drive(
    generator: Generator[Event, Any, Result],
    stopped: Callable[[], bool] = _never,
    after: Callable[[Event], Iterable[Any]] | None = None,
) -> Generator[Any, None, Result | None]:
    """Re-yield ``generator``'s events, checking ``stopped()`` before each step.

    After each event, also yield what ``after(event)`` gives (e.g. a preview).
    Returns the generator's result, or None when ``stopped()`` became true
    first; ``generator`` is closed either way.
    """
    with contextlib.closing(generator):
        while not stopped():
            try:
                event = next(generator)
            except StopIteration as finished:
                return finished.value
            yield event
            if after is not None:
                yield from after(event)
    return None


def run_to_end(
    generator: Generator[Event, Any, Result],
    each: Callable[[Event], Any] | None = None,
    stopped: Callable[[], bool] = _never,
) -> Result | None:
    """Drive ``generator`` to its end, calling ``each(event)`` per event; return its result.

    With ``stopped``, end early (returning None) once it is true between steps.
    """
    with contextlib.closing(drive(generator, stopped)) as events:
        while True:
            try:
                event = next(events)
            except StopIteration as finished:
                return finished.value
            if each is not None:
                each(event)
