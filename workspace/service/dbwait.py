"""A starting service waits for its PostgreSQL server (docs/design/replicas.md).

A server that is not up yet (refused, no socket, starting up, too many clients) is waited
for, up to ``WAIT_S`` (as a service on SQLite waits for another's migration), saying so in
the log every ``SAY_EVERY_S``. What waiting cannot fix -- the database or the role does
not exist, authentication failed -- is a ``ConfigError`` at once: the service says
"cannot start: ..." in one line and exits non-zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from workspace.errors import ConfigError
from workspace.store import engines
from workspace.store.engines import reason as reason  # re-exported (main.py)

log = logging.getLogger("workspace.service")

WAIT_S = 300.0
SAY_EVERY_S = 5.0
POLL_S = 1.0
CONNECT_TIMEOUT_S = 5
# What a server that answered says when trying again cannot help.
_FINAL = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "password",
    "certificate",
)


def final(message: str) -> bool:
    """Whether the connection failed in a way waiting cannot fix."""
    low = message.lower()
    return any(f in low for f in _FINAL)


def wait_for_database(
    url: str,
    wait_s: float = WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the PostgreSQL database at ``url`` takes a connection (at once for
    SQLite); ConfigError when it cannot (``final``) or did not within ``wait_s``."""
    url = engines.normalize_url(url)
    if not url.startswith("postgresql"):
        return
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    start = time.monotonic()
    said = 0.0
    try:
        while True:
            try:
                with engine.connect():
                    if said:
                        log.info("the database %s answers; starting", shown)
                    return
            except sa_exc.DBAPIError as exc:
                why = reason(exc)
                if final(why):
                    raise ConfigError(f"database {shown}: {why}") from None
                waited = time.monotonic() - start
                if waited >= wait_s:
                    raise ConfigError(
                        f"database {shown} did not answer for {waited:.0f} s: {why}"
                    ) from None
                if not said or time.monotonic() - said >= SAY_EVERY_S:
                    log.warning(
                        "waiting for the database %s (%.0f s of %g s): %s",
                        shown,
                        waited,
                        wait_s,
                        why,
                    )
                    said = time.monotonic()
            sleep(POLL_S)
    finally:
        engine.dispose()
