"""Rough edges of the `ws` CLI and the Python client as a user meets them: a Client
given a non-string address, `ws quota` for a certificate naming an unknown project,
control characters in what other users wrote, `--mine` on every list of owned things."""

from __future__ import annotations

import pytest

from workspace import errors
from workspace.client import Client


@pytest.mark.parametrize("address", [1234, None, "", "  ", b"localhost:50051"])
def test_a_client_given_no_address_string_says_so(address: object) -> None:
    """`Client(1234)` raised "TypeError: argument of type 'int' is not iterable"."""
    with pytest.raises(errors.BadArgument) as info:
        Client(address)  # type: ignore[arg-type]
    assert str(info.value) == (
        "Client: address must be the service's address as a string, such as "
        f"'localhost:50051' or 'unix:/run/workspace/service.sock', not {address!r}"
    )
