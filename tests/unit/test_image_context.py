"""An image's context and login user: manifest keys (images/manifest.py) and the
service's check at import (workspace/ops/seeds.py ``check_context``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from images import manifest
from workspace.errors import InvalidArgument
from workspace.ops.seeds import check_context

PART = {"partitions": [{"name": "root", "file": "root.qcow2"}]}


def test_a_cloud_image_manifest(tmp_path: Path) -> None:
    m = manifest.parse({**PART, "context": "nocloud", "login_user": "debian"}, tmp_path)
    assert (m.context, m.login_user) == ("nocloud", "debian")


def test_the_default_is_no_context(tmp_path: Path) -> None:
    m = manifest.parse(PART, tmp_path)
    assert (m.context, m.login_user) == ("none", "")
    assert manifest.single(tmp_path / "x.qcow2").context == "none"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"context": "ec2"}, "context 'ec2' is not one of none, nocloud"),
        ({"context": 1}, "context must be a string"),
        ({"login_user": "Root User"}, "login_user 'Root User' is not a user name"),
    ],
)
def test_bad_context_keys(tmp_path: Path, extra: dict[str, object], message: str) -> None:
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.parse({**PART, **extra}, tmp_path)


def test_the_service_checks_them_too() -> None:
    assert check_context("", "", "img") == ("none", "")
    assert check_context("nocloud", "debian", "img") == ("nocloud", "debian")
    with pytest.raises(InvalidArgument, match="image img: context 'cloud' is not one of"):
        check_context("cloud", "", "img")
    with pytest.raises(InvalidArgument, match="image img: login_user '-x' is not a user name"):
        check_context("nocloud", "-x", "img")
