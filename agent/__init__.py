"""The node agent."""

import workspace  # noqa: F401  (first: grpc-core's log level, set before grpc is imported)
