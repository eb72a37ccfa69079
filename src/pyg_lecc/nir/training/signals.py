"""Ctrl-C during training: a stop request honoured between iterations."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["honour_sigint"]

_FORCE_INTERRUPT_AFTER_S = 1.0


class _DeferredSigint:
    """Turns a first SIGINT (Ctrl-C) into a stop request honoured between iterations, so the
    checkpoint written on interruption is never torn. A second SIGINT more than a second
    later raises :class:`KeyboardInterrupt` at once (the launcher's copy of the same Ctrl-C,
    arriving together with it, does not). With ``announce``, the first one says on stderr
    what it waits for: ``busy`` names the work in progress (a validation takes minutes)."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.busy: str | None = None
        self.requested = False
        self._first = 0.0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _DeferredSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first = True, now
            if self.announce:
                what = f"the {self.busy} in progress" if self.busy else "this iteration"
                # os.write: print() could re-enter the stream the signal interrupted.
                os.write(
                    2,
                    f"\ninterrupt: training stops after {what} and writes a checkpoint "
                    "(Ctrl-C again to stop at once)\n".encode(),
                )
        elif now - self._first > _FORCE_INTERRUPT_AFTER_S:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGINT, previous)


def honour_sigint() -> None:
    r"""Makes SIGINT raise :class:`KeyboardInterrupt` in this process (main thread), also when
    it was inherited as ignored (a background job of a non-interactive shell starts so).

    Called first thing by ``pyg-lecc train``: a stop request that arrives before training
    installs its own handler (while the data loads) then stops the run instead of being
    dropped. Does nothing outside the main thread, where signal handlers cannot be set.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
