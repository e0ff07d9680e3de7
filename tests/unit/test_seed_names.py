"""What cloud-init makes of the seed's naming: the hostname (a user's fqdn) and the login
user (a default user the user-data renames), run through the installed cloud-init's own
code (workspace/domain/seed.py)."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_seed import CLOUD_INIT, HOST, NIC, USER_KEY, USERS_SCRIPT, cloud_init
from workspace.domain import seed


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
@pytest.mark.parametrize(
    ("user", "login"),
    [
        (b"#cloud-config\nuser: {name: alice, groups: sudo}\n", "alice"),
        (b"#cloud-config\nuser: bob\n", "bob"),
        (b"#cloud-config\nuser: {name: alice}\nusers: [{name: carol}]\n", "alice"),
        (b"#cloud-config\nuser: {groups: sudo}\n", "debian"),
        (b"#!/bin/sh\nuser=alice\n", "debian"),
    ],
)
def test_the_login_user_is_the_default_user_the_user_data_names(user: bytes, login: str) -> None:
    """cloud-init's `user: {name: alice}` renames the image's default user, whom the
    authorized keys go to: the workspace kept the image's login user (debian), so `ws
    ssh` logged in as an account that did not exist."""
    assert (seed.default_user(user) or "debian") == login
    assert seed.default_user(b"#cloud-config\nuser: {name: 'Not An Account'}\n") == ""
    s = seed.render("box", "id1", (NIC,), user, b"", [USER_KEY], HOST, login)
    out = cloud_init(USERS_SCRIPT, s.user_data)
    assert json.loads(out.stdout)["default"] == login


HOSTNAME_SCRIPT = (
    USERS_SCRIPT.split("class Distro:")[0]
    + r"""
class Cloud:  # the NoCloud datasource: local-hostname from our meta-data
    def get_hostname(self, fqdn=False, metadata_only=False):
        from cloudinit.sources import DataSourceHostname
        return DataSourceHostname("box", False)
print(json.dumps(list(util.get_hostname_fqdn(h.cloud_buf, Cloud())[:2])))
"""
)


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
@pytest.mark.parametrize(
    ("user", "names"),
    [
        (b"#cloud-config\nfqdn: node1.example.org\n", ["node1", "node1.example.org"]),
        (b"#cloud-config\nhostname: mine\n", ["mine", "box"]),
        (b"#cloud-config\nruncmd: [[true]]\n", ["box", "box"]),
    ],
)
def test_a_users_fqdn_names_the_guest(user: bytes, names: list[str]) -> None:
    """cloud-init's documented way to name a host is `fqdn`, its first label the
    hostname unless `hostname` is set: the service's `hostname` (merged in, as the user
    set none) kept the workspace's name as the hostname beside the user's fqdn."""
    s = seed.render("box", "id1", (NIC,), user, b"", [USER_KEY], HOST, "debian")
    out = cloud_init(HOSTNAME_SCRIPT, s.user_data)
    assert json.loads(out.stdout) == names
