"""SSH keys and the NoCloud seed over the real service (insecure mode: the caller is the
admin ``local``) with fake-driver agents: `ws key` through the client and the CLI, host
keys and seeds of a nocloud image's workspaces and cluster members, and user-data
refused at create with nothing stored."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import yaml

from tests.functional.harness import Site, service_config
from workspace.cli import ws
from workspace.client import Client
from workspace.domain import seed, sshkeys
from workspace.domain.model import Order
from workspace.errors import InvalidArgument, NotFound, ResourceExhausted
from workspace.ops import reports, seeds
from workspace.store import Image
from workspace.v1 import (
    access_pb2,
    access_pb2_grpc,
    clusters_pb2,
    common_pb2,
    images_pb2,
    workspaces_pb2,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def keygen(tmp: Path, name: str, comment: str) -> Path:
    path = tmp / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def run(
    module: ModuleType, site: Site, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    try:
        code = module.main(list(argv), connect=lambda _s: Client(site.address))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def import_cloud(site: Site, name: str = "cloud") -> None:
    digest = site.stubs.upload(b"\0" * 65536)
    site.stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name=name,
            partitions=[common_pb2.Partition(name="root", digest=digest, format="raw")],
            context="nocloud",
            login_user="debian",
        )
    )


def orders_of(site: Site, node: str = "node1") -> dict[str, Order]:
    assert site.service is not None
    return {o.name: o for o in reports.orders(site.service.env, node).orders}


def own_config(order: Order) -> dict[str, Any]:
    """The service's part of an order's seed (the last MIME part), parsed."""
    assert order.seed is not None
    msg = email.message_from_bytes(order.seed.user_data)
    last = [p for p in msg.walk() if not p.is_multipart()][-1]
    body = last.get_payload(decode=True)
    assert isinstance(body, bytes)
    doc = yaml.safe_load(body)
    assert isinstance(doc, dict)
    return doc


def names(site: Site) -> set[str]:
    listed = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    return {w.name for w in listed.workspaces}


# -- ws key -------------------------------------------------------------------------------------


def test_keys_through_the_client(site: Site, tmp_path: Path) -> None:
    a = keygen(tmp_path, "a", "alice@laptop")
    b = keygen(tmp_path, "b", "alice@desk")
    with Client(site.address) as c:
        added = c.add_ssh_key(a.with_suffix(".pub").read_text())
        assert added.comment == "alice@laptop"
        assert added.fingerprint == sshkeys.fingerprint(a.with_suffix(".pub").read_text())
        assert added.public_key.startswith("ssh-ed25519 AAAA")
        # The same key again: the one stored.
        again = c.add_ssh_key(a.with_suffix(".pub").read_text())
        assert again.fingerprint == added.fingerprint and again.added_at == added.added_at
        c.add_ssh_key(b.with_suffix(".pub").read_text())
        assert [k.comment for k in c.list_ssh_keys()] == ["alice@laptop", "alice@desk"]
        # By comment, then by fingerprint.
        assert c.remove_ssh_key("alice@desk").comment == "alice@desk"
        assert c.remove_ssh_key(added.fingerprint).fingerprint == added.fingerprint
        assert c.list_ssh_keys() == []
        with pytest.raises(NotFound, match="you have no SSH key 'alice@desk'"):
            c.remove_ssh_key("alice@desk")


def test_bad_keys_are_refused_clearly(site: Site, tmp_path: Path) -> None:
    a = keygen(tmp_path, "a", "me")
    with Client(site.address) as c:
        with pytest.raises(InvalidArgument, match=r"that is a private key; give the \.pub file"):
            c.add_ssh_key(a.read_text())
        # The service refuses one a client sent all the same (not this one: it is not sent).
        keys = access_pb2_grpc.KeysStub(site.stubs.channel)
        with pytest.raises(grpc.RpcError) as refused:
            keys.AddSshKey(access_pb2.AddSshKeyRequest(public_key=a.read_text()))
        said = refused.value.details()  # type: ignore[attr-defined]
        assert said == "that is a private key; give the .pub file"
        with pytest.raises(InvalidArgument, match=r"not an SSH public key .*ssh-ed25519"):
            c.add_ssh_key("hello world")
        assert c.list_ssh_keys() == []


def test_the_key_limit(tmp_path: Path) -> None:
    site = Site(tmp_path, limits={"max_ssh_keys_per_user": 2})
    try:
        with Client(site.address) as c:
            for i in range(2):
                c.add_ssh_key(keygen(tmp_path, f"k{i}", f"k{i}").with_suffix(".pub").read_text())
            third = keygen(tmp_path, "k2", "k2").with_suffix(".pub").read_text()
            with pytest.raises(ResourceExhausted, match=r"limits\.max_ssh_keys_per_user = 2"):
                c.add_ssh_key(third)
            assert len(c.list_ssh_keys()) == 2
    finally:
        site.close()


def test_keys_on_the_command_line(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = keygen(tmp_path, "a", "alice@laptop").with_suffix(".pub")
    code, out, err = run(ws, site, capsys, "key", "add", str(a))
    assert code == 0, err
    fp = sshkeys.fingerprint(a.read_text())
    assert fp in out and "alice@laptop" in out
    code, out, _ = run(ws, site, capsys, "key", "list")
    assert code == 0 and fp in out and "ssh-ed25519" in out
    code, out, _ = run(ws, site, capsys, "-o", "json", "key", "list")
    (listed,) = json.loads(out)
    assert listed["fingerprint"] == fp and listed["comment"] == "alice@laptop"
    code, _, err = run(ws, site, capsys, "key", "add", str(a.with_suffix("")))
    said = "is a private key, which stays on this machine (it was not sent): give its public half"
    assert code != 0 and f"{said}, {a}" in err
    code, out, _ = run(ws, site, capsys, "key", "remove", "alice@laptop")
    assert code == 0 and fp in out
    code, out, _ = run(ws, site, capsys, "-o", "json", "key", "list")
    assert json.loads(out) == []


# -- seeds ----------------------------------------------------------------------------------------


def test_a_nocloud_workspace_has_host_keys_and_a_seed_with_the_users_key(
    ready_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    import_cloud(site)
    pub = keygen(tmp_path, "a", "alice@laptop").with_suffix(".pub").read_text().strip()
    with Client(site.address) as c:
        c.add_ssh_key(pub)
        img = c.get_image("cloud")
        assert (img.context, img.login_user) == ("nocloud", "debian")
    script = b"#!/bin/sh\necho hello > /tmp/hello\n"
    w = site.stubs.create(name="box", image="cloud", user_data=script)
    assert w.login_user == "debian"
    (host_key,) = w.host_keys
    assert host_key.startswith("ssh-ed25519 AAAA")
    order = orders_of(site)["box"]
    assert order.seed is not None
    assert json.loads(order.seed.meta_data) == {"instance-id": w.id, "local-hostname": "box"}
    net = yaml.safe_load(order.seed.network_config)
    assert net["ethernets"]["nic0"]["addresses"] == [f"{w.nics[0].ip}/{w.nics[0].prefix_len}"]
    cfg = own_config(order)
    assert cfg["ssh_authorized_keys"] == [pub]
    assert cfg["ssh_keys"]["ed25519_public"] == host_key
    assert "BEGIN OPENSSH PRIVATE KEY" in cfg["ssh_keys"]["ed25519_private"]
    assert script in _payloads(order)
    # The busybox image takes none.
    plain = site.stubs.create(name="plain", image="img")
    assert list(plain.host_keys) == [] and plain.login_user == ""
    assert list(w.ssh_keys) == [sshkeys.fingerprint(pub)]  # which keys the guest takes
    assert orders_of(site)["plain"].seed is None
    # ws show prints the login user and the host key's fingerprint.
    code, out, _ = run(ws, site, capsys, "show", "box")
    assert code == 0
    assert "login_user" in out and "debian" in out
    assert f"{sshkeys.fingerprint(host_key)} (ssh-ed25519)" in out
    assert ["ssh_key", sshkeys.fingerprint(pub)] in [line.split() for line in out.splitlines()]
    # A key added later goes into later workspaces only.
    with Client(site.address) as c:
        later = keygen(tmp_path, "b", "later").with_suffix(".pub").read_text().strip()
        c.add_ssh_key(later)
    site.stubs.create(name="box2", image="cloud")
    orders = orders_of(site)
    assert own_config(orders["box"])["ssh_authorized_keys"] == [pub]
    assert own_config(orders["box2"])["ssh_authorized_keys"] == [pub, later]
    # and the API says so, for each (what `ws ssh` tells a caller whose key is not in it).
    with Client(site.address) as c:
        shown = {x.name: list(x.ssh_keys) for x in c.list_workspaces()}
    fps = [sshkeys.fingerprint(pub), sshkeys.fingerprint(later)]
    assert (shown["box"], shown["box2"], shown["plain"]) == (fps[:1], fps, [])


def _payloads(order: Order) -> list[bytes]:
    assert order.seed is not None
    msg = email.message_from_bytes(order.seed.user_data)
    out = []
    for p in msg.walk():
        if not p.is_multipart():
            body = p.get_payload(decode=True)
            assert isinstance(body, bytes)
            out.append(body)
    return out


def test_a_clusters_orders_carry_the_complete_roster(ready_site: Site) -> None:
    site = ready_site
    import_cloud(site)
    site.add_agent("node2")
    c = site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="mpi",
            members=[
                clusters_pb2.ClusterMember(role="head", image="cloud", count=1),
                clusters_pb2.ClusterMember(role="worker", image="cloud", count=2),
            ],
            affinity=clusters_pb2.AFFINITY_SOFT_ANTI,
        )
    )
    members = {m.name: m for m in c.members}
    assert set(members) == {"mpi-head-0", "mpi-worker-0", "mpi-worker-1"}
    orders = {**orders_of(site, "node1"), **orders_of(site, "node2")}
    assert set(orders) == set(members)
    expected_hosts = [
        f"{members[n].nics[0].ip} {n} {n.removeprefix('mpi-')}"
        for n in ("mpi-head-0", "mpi-worker-0", "mpi-worker-1")
    ]
    cluster_keys = set()
    for name, order in orders.items():
        cfg = own_config(order)
        written = {f["path"]: f for f in cfg["write_files"]}
        assert written["/etc/hosts"]["content"].splitlines()[-3:] == expected_hosts
        about = json.loads(written["/etc/workspace/cluster.json"]["content"])
        assert about["cluster"] == "mpi" and about["name"] == name
        assert [m["name"] for m in about["members"]] == [
            "mpi-head-0",
            "mpi-worker-0",
            "mpi-worker-1",
        ]
        assert [m["addresses"] for m in about["members"]] == [
            [members[n].nics[0].ip] for n in ("mpi-head-0", "mpi-worker-0", "mpi-worker-1")
        ]
        known = written["/etc/ssh/ssh_known_hosts"]["content"].splitlines()
        assert [k.split()[2] for k in known] == [
            members[n].host_keys[0].split()[1]
            for n in ("mpi-head-0", "mpi-worker-0", "mpi-worker-1")
        ]
        cluster_keys.add(written["/home/debian/.ssh/id_ed25519.pub"]["content"])
        assert written["/home/debian/.ssh/id_ed25519"]["permissions"] == "0600"
    assert len(cluster_keys) == 1  # one key pair per cluster


def test_a_default_user_named_in_user_data_is_the_login_user(ready_site: Site) -> None:
    """`user: {name: alice}` renames the image's default user (the one given the keys):
    the workspace said debian, and `ws ssh` logged in as an account that did not exist."""
    import_cloud(ready_site)
    w = ready_site.stubs.create(
        name="named", image="cloud", user_data=b"#cloud-config\nuser: {name: alice}\n"
    )
    assert w.login_user == "alice"
    assert ready_site.stubs.create(name="plain2", image="cloud").login_user == "debian"


def test_user_data_for_an_image_without_context_is_refused(ready_site: Site) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ready_site.stubs.create(name="x", image="img", user_data=b"#!/bin/sh\necho hi\n")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "image img takes no user-data (its context is none)"
    assert "x" not in names(ready_site)


def test_a_members_user_data_that_would_drop_the_roster_at_reboot_is_refused(
    ready_site: Site,
) -> None:
    """``manage_etc_hosts: true`` (common in copied templates) has cloud-init write
    /etc/hosts from its template at every boot: after a member's first reboot the other
    members' names no longer resolved. A cluster's member is refused it, saying what to
    set instead; ``localhost`` is taken, and a lone workspace may set it."""
    site = ready_site
    import_cloud(site)

    def cluster(name: str, user_data: bytes) -> clusters_pb2.Cluster:
        return site.stubs.clusters.CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name=name,
                members=[
                    clusters_pb2.ClusterMember(
                        role="w", image="cloud", count=2, user_data=user_data
                    )
                ],
            )
        )

    for user_data in (
        b"#cloud-config\nmanage_etc_hosts: true\n",
        b"#cloud-config\nmanage_etc_hosts: template\npackages: [htop]\n",
    ):
        with pytest.raises(grpc.RpcError) as info:
            cluster("c", user_data)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            "cluster c, member w: user-data sets manage_etc_hosts to true: cloud-init would "
            "write /etc/hosts anew at every boot and drop the cluster's roster (the members' "
            "names) from it after the first reboot; leave it out, or set it to localhost"
        )
    assert names(site) == set()
    cluster("d", b"#cloud-config\nmanage_etc_hosts: localhost\n")
    assert names(site) == {"d-w-0", "d-w-1"}
    site.stubs.create(
        name="lone", image="cloud", user_data=b"#cloud-config\nmanage_etc_hosts: true\n"
    )
    assert "lone" in names(site)


def test_a_bad_cloud_config_is_refused_and_nothing_is_stored(ready_site: Site) -> None:
    site = ready_site
    import_cloud(site)
    with pytest.raises(grpc.RpcError) as info:
        site.stubs.create(name="x", image="cloud", user_data=b"#cloud-config\nruncmd: [oops\n")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user-data: #cloud-config: not valid YAML" in str(info.value.details())
    with pytest.raises(grpc.RpcError) as info:
        site.stubs.clusters.CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="c",
                members=[
                    clusters_pb2.ClusterMember(
                        role="w", image="cloud", count=2, user_data=b"#cloud-config\n- a\n"
                    )
                ],
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cluster c, member w: user-data: #cloud-config: expected a mapping" in str(
        info.value.details()
    )
    assert names(site) == set()
    listed = site.stubs.clusters.ListClusters(clusters_pb2.ListClustersRequest())
    assert list(listed.clusters) == []


def test_a_vendor_data_that_would_drop_every_members_roster_is_said_at_a_cluster_create(
    tmp_path: Path,
) -> None:
    """The site's vendor-data comes first in every seed, and the service's part keeps
    a value an earlier part set: a vendor-data with ``manage_etc_hosts: true`` dropped
    the roster of every cluster's members at their first reboot, and the creates were
    let through, since only the user's user-data was looked at. A cluster create says
    so and what to do; user-data that sets ``localhost`` (after the vendor's) is taken,
    and a lone workspace is not refused."""
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text("#cloud-config\nmanage_etc_hosts: true\n")
    site = Site(tmp_path / "site", context={"vendor_data_file": str(vendor)})
    try:
        site.stubs.network()
        site.add_agent("node1")
        import_cloud(site)

        def cluster(name: str, user_data: bytes = b"") -> clusters_pb2.Cluster:
            member = clusters_pb2.ClusterMember(
                role="w", image="cloud", count=2, user_data=user_data
            )
            return site.stubs.clusters.CreateCluster(
                clusters_pb2.CreateClusterRequest(name=name, members=[member])
            )

        for user_data in (b"", b"#cloud-config\npackages: [htop]\n"):
            with pytest.raises(grpc.RpcError) as info:
                cluster("c", user_data)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == (
                "cluster c, member w: the site's vendor-data sets manage_etc_hosts to true: "
                "cloud-init would write /etc/hosts anew at every boot and drop the "
                "cluster's roster (the members' names) from it after the first reboot; set "
                "manage_etc_hosts: localhost in the members' user-data (it comes after the "
                "vendor-data; in a part that replaces what came before, cloud-init's default "
                "merge), or ask the site's admins to take it out of context.vendor_data_file"
            )
        # ws-slurm's rule part keeps what came before (its Merge-Type): its localhost
        # does not undo the vendor-data's true, and is no way around the refusal.
        rule = clusters_pb2.ClusterMember(
            role="w",
            image="cloud",
            user_data=seed.multipart(
                [
                    seed.Part(
                        "cloud-config",
                        b"#cloud-config\nmanage_etc_hosts: localhost\n",
                        "ws-slurm-0",
                        "dict(recurse_array,no_replace)+list(append)",
                    )
                ]
            ),
        )
        with pytest.raises(grpc.RpcError) as info:
            site.stubs.clusters.CreateCluster(
                clusters_pb2.CreateClusterRequest(name="s", members=[rule])
            )
        assert "the site's vendor-data sets manage_etc_hosts" in (info.value.details() or "")
        assert names(site) == set()
        cluster("d", b"#cloud-config\nmanage_etc_hosts: localhost\n")
        assert names(site) == {"d-w-0", "d-w-1"}
        site.stubs.create(name="lone", image="cloud")
        assert "lone" in names(site)
    finally:
        site.close()


def test_a_members_manage_etc_hosts_that_cloud_init_would_not_take_is_not_refused(
    tmp_path: Path,
) -> None:
    """The refusal follows what cloud-init makes of the whole seed: a user part that
    keeps what came before (``dict()``) setting true after a vendor-data's false
    changes nothing, and was refused all the same."""
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text("#cloud-config\nmanage_etc_hosts: false\n")
    cfg = service_config(tmp_path, context={"vendor_data_file": str(vendor)})
    image = Image(name="cloud", context="nocloud")
    kept = b"#cloud-config\nmerge_how: dict()+list()\nmanage_etc_hosts: true\n"
    seeds.check_user_data(cfg, image, kept, member=True)
    with pytest.raises(InvalidArgument) as info:
        seeds.check_user_data(cfg, image, b"#cloud-config\nmanage_etc_hosts: true\n", member=True)
    assert info.value.message.startswith("user-data sets manage_etc_hosts to true")
