"""The service's operations: each takes and returns domain objects, never protobuf.

Every operation has one shape: check the arguments, then inside one store transaction
check the prerequisites and execute, then publish the events after the commit
(``ops.unit``). See docs/design/ops.md.
"""
