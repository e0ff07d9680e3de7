"""The process's logging set-up kept across a block of code: ``with kept(): ...`` undoes
what the block changed of it. tests/conftest.py keeps it so around every test.

What is kept: each logger existing before the block (the root too) gets back its level,
handlers, propagation and disabled flag; ``logging.disable``'s level, where warnings go
and the excepthooks of the process and of threads are put back. ``workspace.log.setup``
changes the root's level and handlers and, with ``json``, the warnings and excepthooks;
``ws-slurm``'s set-up makes its logger stop propagating. pytest's own capture handlers
are among the root's before (it adds the same ones again at each phase of a test), so
they stay; the handlers the block added are closed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def kept() -> Iterator[None]:
    manager = logging.Logger.manager
    loggers = [logging.root] + [
        lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.handlers[:], lg.propagate, lg.disabled) for lg in loggers]
    disable = manager.disable
    showwarning, excepthook, thread_hook = (
        warnings.showwarning,
        sys.excepthook,
        threading.excepthook,
    )
    try:
        yield
    finally:
        outer = set(saved[0][2])  # the root's before: pytest's capture handlers among them
        for lg, level, handlers, propagate, disabled in saved:
            if lg.handlers != handlers:
                for added in [h for h in lg.handlers if h not in handlers and h not in outer]:
                    added.close()  # the block's own (a stream to a captured stderr, a file)
                lg.handlers[:] = handlers
            if lg.level != level:
                lg.setLevel(level)  # also clears every logger's cached levels
            lg.propagate, lg.disabled = propagate, disabled
        logging.disable(disable)
        if warnings.showwarning is not showwarning:
            logging.captureWarnings(False)  # forgets what it saved, or it would not capture again
            warnings.showwarning = showwarning
        sys.excepthook, threading.excepthook = excepthook, thread_hook
