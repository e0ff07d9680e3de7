"""The workspace service, its clients (``ws``, ``ws-admin``, the Python client) and what
the node agent shares with them."""

import os

# grpc-core logs by itself to stderr, in its own format ("I1206 09:50:38.453733 9305
# chttp2_transport.cc:1403] …: Got goaway …"), at INFO for what the programs report
# themselves: lines among a daemon's log (log_format = "json": one object a line) and
# above a CLI's one-line error. It reads this when grpc is imported, so before that: its
# errors only, unless the environment asks for more (GRPC_VERBOSITY=DEBUG to debug). Not
# with GRPC_TRACE set: its traces are INFO lines, which ERROR would drop without a word.
if "GRPC_TRACE" not in os.environ:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
