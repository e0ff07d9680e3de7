"""Whom a stream counts against, and the counter behind the per-caller cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workspace import pki
from workspace.edge.limits import StreamCounter, caller_key
from workspace.identity import Identity, Kind


class Context:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self.auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth


def _pem(tmp_path: Path, identity: Identity) -> bytes:
    ca = pki.init(tmp_path / "ca")
    ca.issue(identity, tmp_path / identity.name)
    return (tmp_path / identity.name / "cert.pem").read_bytes()


def test_without_a_certificate_every_caller_is_the_default_owner() -> None:
    assert caller_key(Context({}), "local") == "user:local"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "identity",
    [Identity(Kind.USER, "alice", projects=("physics",)), Identity(Kind.NODE, "n1")],
)
def test_a_certificate_counts_for_its_identity(tmp_path: Path, identity: Identity) -> None:
    ctx: Any = Context({"x509_pem_cert": [_pem(tmp_path, identity)]})
    assert caller_key(ctx, "local") == identity.principal


def test_a_certificate_without_an_identity_counts_alone(tmp_path: Path) -> None:
    a: Any = Context({"x509_pem_cert": [b"not a certificate"]})
    b: Any = Context({"x509_pem_cert": [b"another one"]})
    ka, kb = caller_key(a, "local"), caller_key(b, "local")
    assert ka.startswith("cert:") and kb.startswith("cert:") and ka != kb


def test_the_counter_caps_each_key_and_frees_on_release() -> None:
    c = StreamCounter(2)
    assert c.acquire("user:a") and c.acquire("user:a")
    assert not c.acquire("user:a")
    assert c.acquire("user:b")  # another caller is not affected
    c.release("user:a")
    assert c.open_streams("user:a") == 1
    assert c.acquire("user:a")
    for _ in range(3):
        c.release("user:a")
    assert c.open_streams("user:a") == 0 and c.acquire("user:a")
