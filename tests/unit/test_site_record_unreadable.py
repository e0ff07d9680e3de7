"""A local site's record that this user may not read: another user's site (root's), as
SlurmUser's ws-slurm pointed at its socket finds it. As root every file reads: the
kernel's EACCES is made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workspace.client_address import local_site_hint
from workspace.site import record


@pytest.fixture
def unreadable_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / record.SITE_FILE).write_text(json.dumps({"address": f"unix:{site}/service.sock"}))
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == site / record.SITE_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    return site


def test_an_unreadable_site_record_is_not_called_invalid_nor_to_be_removed(
    unreadable_site: Path,
) -> None:
    """It said "site.json is not a valid site record (Permission denied); remove it": a
    user who could not read root's site was told to delete its record."""
    with pytest.raises(record.SiteUnreadable) as raised:
        record.read_record(unreadable_site)
    said = raised.value.message
    assert said.startswith(f"{unreadable_site / record.SITE_FILE} cannot be read (Permission")
    assert "another user's" in said
    assert "remove it" not in said and "not a valid" not in said


def test_a_client_of_another_users_site_socket_is_not_stopped_by_its_record(
    unreadable_site: Path,
) -> None:
    """ws-slurm as SlurmUser with service = "unix:<root's site>/service.sock": `check`
    said "the workspace service refused ws-slurm: .../site.json is not a valid site
    record ...; remove it" before any call; now the record is passed over and the
    connection's own error (Permission denied on the socket) is what is said."""
    assert local_site_hint(f"unix:{unreadable_site}/service.sock") == ""
