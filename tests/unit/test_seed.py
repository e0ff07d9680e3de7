"""The NoCloud seed (workspace/domain/seed.py): each document, the MIME structure and the
order of its parts, the roster of a 3-member cluster, and cloud-init's own merging of
the parts (with the cloud-init installed on this machine, when there is one)."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml

from images import mkfs
from workspace.domain import seed, userdata
from workspace.domain.model import Nic
from workspace.ops.keys import new_key_pair

USER_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFVZbZ3EXhyOoC1P1Sb7GbhLWyH1sVrRfQ2KDW4H7WeS me@laptop"
)
NIC = Nic(
    "default",
    "10.0.0.5",
    "52:54:00:12:34:56",
    24,
    "10.0.0.1",
    "wsbr0",
    "10.0.0.0/24",
    ("10.0.0.1",),
)
NIC2 = Nic("storage", "10.9.0.7", "52:54:00:ab:cd:ef", 24, "10.9.0.1", "wsbr1", "10.9.0.0/24")
HOST = new_key_pair()
CLUSTER = new_key_pair()
CLOUD_INIT = Path("/usr/lib/python3/dist-packages/cloudinit/mergers/__init__.py")


def cloud_init(script: str, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``script`` run by the Python of the installed cloud-init, with ``stdin`` its input
    and ``args`` its arguments (it must succeed)."""
    return subprocess.run(
        ["/usr/bin/python3", "-c", script, *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )


def parts(user_data: bytes) -> list[Message]:
    msg = email.message_from_bytes(user_data)
    assert msg.is_multipart() and msg.get_content_type() == "multipart/mixed"
    return [p for p in msg.walk() if not p.is_multipart()]


def payload(p: Message) -> bytes:
    data = p.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def own_config(user_data: bytes) -> dict[str, Any]:
    """The service's part (the last one), parsed as cloud-init parses it (YAML)."""
    last = parts(user_data)[-1]
    assert last.get_content_type() == "text/cloud-config"
    assert last.get_filename() == "workspace.cfg"
    text = payload(last).decode()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def files(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in cfg["write_files"]}


def three_members() -> seed.Roster:
    keys = [new_key_pair()[1] for _ in range(3)]
    return seed.Roster(
        "mpi",
        (
            seed.Member("mpi-head-0", "head", 0, ("10.0.0.5",), keys[0]),
            seed.Member("mpi-worker-0", "worker", 0, ("10.0.0.6",), keys[1]),
            seed.Member("mpi-worker-1", "worker", 1, ("10.0.0.7", "10.9.0.7"), keys[2]),
        ),
        *CLUSTER,
    )


# -- meta-data and network-config -------------------------------------------------------------


def test_meta_data_names_the_instance_and_the_host() -> None:
    s = seed.render("box", "0123456789ab", (NIC,))
    assert yaml.safe_load(s.meta_data) == {"instance-id": "0123456789ab", "local-hostname": "box"}


def test_network_config_matches_every_nic_by_mac_with_its_static_address() -> None:
    doc = yaml.safe_load(seed.network_config((NIC, NIC2)))
    assert doc["version"] == 2
    nic0, nic1 = doc["ethernets"]["nic0"], doc["ethernets"]["nic1"]
    # The MAC stays a string (YAML 1.1 would read 52:54:00:12:34:56 as a number).
    assert nic0["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert nic0["addresses"] == ["10.0.0.5/24"]
    assert nic0["gateway4"] == "10.0.0.1" and "routes" not in nic0
    assert nic0["nameservers"] == {"addresses": ["10.0.0.1"]}
    # One default route only: the first NIC's.
    assert nic1["match"] == {"macaddress": "52:54:00:ab:cd:ef"}
    assert nic1["addresses"] == ["10.9.0.7/24"] and "gateway4" not in nic1


def test_an_ipv6_nic_gets_an_ipv6_default_route() -> None:
    nic = Nic("v6", "fd00::5", "52:54:00:00:00:01", 64, "fd00::1")
    doc = yaml.safe_load(seed.network_config((nic,)))
    assert doc["ethernets"]["nic0"]["gateway6"] == "fd00::1"


# -- user-data: the MIME document --------------------------------------------------------------


def test_user_data_parts_in_order_vendor_user_service() -> None:
    vendor = b"#cloud-config\npackages: [htop]\n"
    user = b"#!/bin/sh\necho hello > /tmp/hello\n"
    s = seed.render("box", "id1", (NIC,), user, vendor, [USER_KEY], HOST, "debian")
    got = parts(s.user_data)
    assert [p.get_content_type() for p in got] == [
        "text/cloud-config",
        "text/x-shellscript",
        "text/cloud-config",
    ]
    assert [p.get_filename() for p in got] == ["vendor-data", "user-data", "workspace.cfg"]
    # The user's and the site's documents exactly as given.
    assert payload(got[0]) == vendor
    assert payload(got[1]) == user


def test_the_service_part_carries_the_host_key_and_the_authorized_keys() -> None:
    s = seed.render("box", "id1", (NIC,), b"", b"", [USER_KEY], HOST, "debian")
    cfg = own_config(s.user_data)
    assert cfg["merge_how"] == seed.MERGE_HOW
    assert cfg["hostname"] == "box"
    assert cfg["ssh_keys"] == {"ed25519_private": HOST[0], "ed25519_public": HOST[1]}
    assert cfg["ssh_deletekeys"] is True and cfg["ssh_genkeytypes"] == ["ed25519"]
    assert cfg["ssh_authorized_keys"] == [USER_KEY]
    assert cfg["disable_root"] is True
    assert "/etc/workspace/workspace.json" in files(cfg)
    assert "manage_etc_hosts" not in cfg  # a single workspace: the image's default


def test_a_users_multipart_document_is_flattened_into_its_parts() -> None:
    user = (
        b'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n'
        b"--XX\nContent-Type: text/cloud-config\n"
        b'Content-Disposition: attachment; filename="a.cfg"\n'
        b"Merge-Type: list(append)+dict(recurse_array)+str()\n\n"
        b"#cloud-config\nruncmd: [[touch, /tmp/a]]\n"
        b"--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho b\n--XX--\n"
    )
    s = seed.render("box", "id1", (NIC,), user, b"", [], HOST, "debian")
    got = parts(s.user_data)
    assert [p.get_content_type() for p in got] == [
        "text/cloud-config",
        "text/x-shellscript",
        "text/cloud-config",
    ]
    assert got[0].get_filename() == "a.cfg"
    assert got[0]["Merge-Type"] == "list(append)+dict(recurse_array)+str()"
    # The line break before a boundary belongs to the boundary (RFC 2046).
    assert payload(got[0]) == b"#cloud-config\nruncmd: [[touch, /tmp/a]]"
    assert payload(got[1]).startswith(b"#!/bin/sh\necho b")


def test_the_seed_is_the_same_bytes_for_the_same_inputs() -> None:
    def one() -> bytes:
        s = seed.render("box", "id1", (NIC,), b"#!/bin/sh\n", b"", [USER_KEY], HOST, "debian")
        return s.meta_data + s.user_data + s.network_config

    assert one() == one()


def test_no_private_key_without_a_host_key() -> None:
    cfg = own_config(seed.render("box", "id1", (NIC,)).user_data)
    assert "ssh_keys" not in cfg and "ssh_deletekeys" not in cfg


# -- a cluster member: the roster ---------------------------------------------------------------


def test_a_member_of_three_knows_every_member() -> None:
    roster = three_members()
    s = seed.render(
        "mpi-worker-1", "id3", (NIC, NIC2), b"", b"", [USER_KEY], HOST, "debian", roster
    )
    cfg = own_config(s.user_data)
    written = files(cfg)
    assert cfg["manage_etc_hosts"] is False

    hosts = written["/etc/hosts"]["content"].splitlines()
    assert hosts[0] == "127.0.0.1 localhost"
    assert hosts[-3:] == [
        "10.0.0.5 mpi-head-0 head-0",
        "10.0.0.6 mpi-worker-0 worker-0",
        "10.0.0.7 mpi-worker-1 worker-1",
    ]

    about = json.loads(written["/etc/workspace/cluster.json"]["content"])
    assert (about["cluster"], about["name"], about["role"], about["index"]) == (
        "mpi",
        "mpi-worker-1",
        "worker",
        1,
    )
    assert about["members"] == [
        {"name": "mpi-head-0", "role": "head", "index": 0, "addresses": ["10.0.0.5"]},
        {"name": "mpi-worker-0", "role": "worker", "index": 0, "addresses": ["10.0.0.6"]},
        {
            "name": "mpi-worker-1",
            "role": "worker",
            "index": 1,
            "addresses": ["10.0.0.7", "10.9.0.7"],
        },
    ]

    known = written["/etc/ssh/ssh_known_hosts"]["content"].splitlines()
    assert len(known) == 3
    for line, m in zip(known, roster.members, strict=True):
        names, key = line.split(" ", 1)
        assert names.split(",") == [m.name, m.alias, *m.addresses]
        assert key == " ".join(m.host_key.split()[:2])

    # The cluster's key: authorized everywhere, the private half the login user's.
    assert cfg["ssh_authorized_keys"] == [USER_KEY, CLUSTER[1]]
    private = written["/home/debian/.ssh/id_ed25519"]
    assert private["content"] == CLUSTER[0]
    assert (private["owner"], private["permissions"], private["defer"]) == (
        "debian:debian",
        "0600",
        True,
    )
    assert written["/home/debian/.ssh/id_ed25519.pub"]["defer"] is True


def test_ext4_blank_disks_are_mounted_by_the_uuid_the_node_gives_them() -> None:
    cfg = own_config(
        seed.render(
            "box", "id1", (NIC,), login_user="debian", data_disks=("scratch", "work")
        ).user_data
    )
    assert cfg["mounts"] == [
        [
            f"/dev/disk/by-uuid/{mkfs.fs_uuid('id1', name)}",
            f"/mnt/{name}",
            "ext4",
            "defaults,nofail",
            "0",
            "2",
        ]
        for name in ("scratch", "work")
    ]
    # Each workspace's filesystems have their own UUIDs.
    assert len({mkfs.fs_uuid(w, n) for w in ("id1", "id2") for n in ("scratch", "work")}) == 4
    prune, (sh, c, script) = cfg["runcmd"]  # the keys' pruning (no keys given), the chown
    assert seed.KEYS_PREVIOUS in prune[2] and (sh, c) == ("sh", "-c")
    assert "for d in /mnt/scratch /mnt/work;" in script and 'chown debian: "$d"' in script
    assert 'mountpoint -q "$d"' in script and script.endswith("; true")


def test_no_mounts_without_ext4_blanks_and_no_chown_for_root() -> None:
    cfg = own_config(seed.render("box", "id1", (NIC,), login_user="debian").user_data)
    assert "mounts" not in cfg and len(cfg["runcmd"]) == 1  # the keys' pruning only
    cfg = own_config(
        seed.render("box", "id1", (NIC,), login_user="root", data_disks=("s",)).user_data
    )
    assert len(cfg["mounts"]) == 1 and len(cfg["runcmd"]) == 1


def test_member_index_comes_from_the_name() -> None:
    assert seed.member_index("my-mpi-big-worker-12") == 12
    assert seed.member_index("odd") == 0


# -- cloud-init's own merging of the parts ------------------------------------------------------

MERGE_SCRIPT = r"""
import email, json, sys
sys.path.append("/usr/lib/python3/dist-packages")
from cloudinit import mergers
from cloudinit.handlers.cloud_config import DEF_MERGERS, MERGE_HEADER
msg = email.message_from_bytes(sys.stdin.buffer.read())
buf = {}
for part in msg.walk():
    if part.is_multipart() or part.get_content_type() != "text/cloud-config":
        continue
    payload = part.get_payload(decode=True).decode()
    import yaml
    doc = yaml.safe_load(payload)
    chosen = mergers.dict_extract_mergers(doc)
    chosen += mergers.string_extract_mergers(part.get(MERGE_HEADER, ""))
    buf = mergers.construct(chosen or DEF_MERGERS).merge(buf, doc)
print(json.dumps(buf))
"""


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_cloud_init_merges_the_users_lists_with_the_services() -> None:
    """The user's write_files, runcmd and mounts survive; the service's files, keys, host
    key, mounts and commands are added; a value the user set on purpose (hostname) stays
    the user's."""
    user = (
        b"#cloud-config\n"
        b"hostname: mine\n"
        b"runcmd: [[touch, /tmp/ran]]\n"
        b"mounts: [[/dev/vdz, /data]]\n"
        b"ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn other@x]\n"
        b"write_files:\n- path: /etc/motd\n  content: hello\n"
    )
    vendor = b"#cloud-config\nwrite_files:\n- path: /etc/vendor\n  content: site\n"
    s = seed.render(
        "mpi-head-0",
        "id1",
        (NIC,),
        user,
        vendor,
        [USER_KEY],
        HOST,
        "debian",
        three_members(),
        ("scratch",),
    )
    out = cloud_init(MERGE_SCRIPT, s.user_data)
    merged = json.loads(out.stdout)
    paths = [f["path"] for f in merged["write_files"]]
    # The user's part replaces the vendor's list (cloud-init's default), ours is appended.
    assert paths[0] == "/etc/motd"
    assert {"/etc/hosts", "/etc/workspace/cluster.json", "/etc/ssh/ssh_known_hosts"} <= set(paths)
    assert "/etc/workspace/authorized_keys" in paths
    # The user's commands run first; the keys' pruning and the scratch disk's chown after.
    assert merged["runcmd"][0] == ["touch", "/tmp/ran"] and len(merged["runcmd"]) == 3
    assert merged["runcmd"][1][:2] == ["sh", "-c"] and "authorized_keys" in merged["runcmd"][1][2]
    assert merged["runcmd"][2][:2] == ["sh", "-c"] and "/mnt/scratch" in merged["runcmd"][2][2]
    assert merged["bootcmd"] == [seed.KEYS_SET_ASIDE]
    assert [m[:2] for m in merged["mounts"]] == [
        ["/dev/vdz", "/data"],
        [f"/dev/disk/by-uuid/{mkfs.fs_uuid('id1', 'scratch')}", "/mnt/scratch"],
    ]
    assert merged["ssh_keys"]["ed25519_private"] == HOST[0]
    assert merged["ssh_genkeytypes"] == ["ed25519"] and merged["ssh_deletekeys"] is True
    assert merged["ssh_authorized_keys"][1:] == [USER_KEY, CLUSTER[1]]
    assert merged["hostname"] == "mine"


USERS_SCRIPT = r"""
import json, sys
sys.path.append("/usr/lib/python3/dist-packages")
from cloudinit import handlers, util
from cloudinit.distros import ug_util
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.user_data import UserDataProcessor
class Paths:  # where the handler would write the merged config (it does not, here)
    def get_ipath(self, name):
        return "/nonexistent"
h = CloudConfigPartHandler(Paths())
h.handle_part(None, handlers.CONTENT_START, None, None, None, None)
for part in UserDataProcessor({}).process(sys.stdin.buffer.read()).walk():
    if not part.is_multipart() and part.get_content_type() == "text/cloud-config":
        payload = part.get_payload(decode=True).decode()
        h.handle_part(None, part.get_content_type(), "f", payload, None, dict(part.items()))
class Distro:  # the cloud appliance's default user (system_info.default_user)
    def get_default_user(self):
        return {"name": "debian", "lock_passwd": True}
# Over the image's /etc/cloud/cloud.cfg (`users: [default]`), the user-data's keys first.
cfg = util.mergemanydict([h.cloud_buf, {"users": ["default"]}])
users, _ = ug_util.normalize_users_groups(cfg, Distro())
print(json.dumps({"users": sorted(users), "default": ug_util.extract_default(users)[0]}))
"""


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
@pytest.mark.parametrize(
    ("user", "accounts"),
    [
        (b"#cloud-config\nusers:\n- name: alice\n  groups: sudo\n", ["alice", "debian"]),
        (b"#cloud-config\nusers: [default, bob]\n", ["bob", "debian"]),
        (b"#Cloud-Config\nusers: [erin]\n", ["debian", "erin"]),  # cloud-init lowercases it
        (b"#cloud-config\nruncmd: [[true]]\n", ["debian"]),
        (  # a part declared cloud-config needs no #cloud-config line
            b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n--B\n'
            b"Content-Type: text/cloud-config\n\nusers: [carol]\n--B--\n",
            ["carol", "debian"],
        ),
        # The forms cloud-init still reads besides a list (deprecated there): a string of
        # names, a mapping of name to config; its `default: false` is the user's choice.
        (b"#cloud-config\nusers: alice\n", ["alice", "debian"]),
        (b"#cloud-config\nusers: alice, bob\n", ["alice", "bob", "debian"]),
        (b"#cloud-config\nusers: 'default, alice'\n", ["alice", "debian"]),
        (b"#cloud-config\nusers:\n  alice: {groups: sudo}\n", ["alice", "debian"]),
        (b"#cloud-config\nusers: {alice: true}\n", ["alice", "debian"]),
    ],
)
def test_a_users_list_without_default_still_creates_the_login_user(
    user: bytes, accounts: list[str]
) -> None:
    """cloud-init gives the authorized keys to the default user only, and a `users` list
    replaces the image's `[default]`: a scientist's `users: [{name: alice}]` left no
    login user (`ws ssh` refused, the keys on a disabled root). The service's part adds
    `default` to such a list; the user's accounts stay. `users: alice` or a mapping did
    the same (a list of ours would replace the string): there the part names the default
    user (`user:`), which cloud-init adds to `users` in any form."""
    s = seed.render("box", "id1", (NIC,), user, b"", [USER_KEY], HOST, "debian")
    out = cloud_init(USERS_SCRIPT, s.user_data)
    assert json.loads(out.stdout) == {"users": accounts, "default": "debian"}
    # Without users of theirs the image's own list (its cloud.cfg) stays in force.
    own = own_config(s.user_data)
    assert ("users" in own or "user" in own) == (b"users:" in user)
    userdata.check(user)


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_the_last_users_given_decides_how_the_login_user_is_kept() -> None:
    """The site's vendor-data gives a users list and the user's `users: alice` replaces
    it: a `users: [default]` of ours, appended as to the vendor's list, replaced the
    user's string (alice not created); `users: {alice: ..., default: false}` is the
    user's own choice and stays so."""
    vendor = b"#cloud-config\nusers: [default, ops]\n"
    for user, accounts in (
        (b"#cloud-config\nusers: alice\n", ["alice", "debian"]),
        (b"#cloud-config\nusers: {alice: {groups: sudo}, default: false}\n", ["alice"]),
    ):
        s = seed.render("box", "id1", (NIC,), user, vendor, [USER_KEY], HOST, "debian")
        out = cloud_init(USERS_SCRIPT, s.user_data)
        assert json.loads(out.stdout)["users"] == accounts, user


SCRIPTS_SCRIPT = r"""
import os, sys
sys.path.append("/usr/lib/python3/dist-packages")
from cloudinit.handlers.shell_script import ShellScriptPartHandler
from cloudinit.user_data import UserDataProcessor
class Paths:
    def get_ipath_cur(self, name):
        return sys.argv[1]
h = ShellScriptPartHandler(Paths())
for part in UserDataProcessor({}).process(sys.stdin.buffer.read()).walk():
    if not part.is_multipart() and part.get_content_type() == "text/x-shellscript":
        payload = part.get_payload(decode=True).decode()
        try:
            h.handle_part(None, part.get_content_type(), part.get_filename(), payload, None)
        except OSError as exc:
            print("not written:", exc, file=sys.stderr)
d = sys.argv[1]
print(sorted(open(os.path.join(d, n)).read().split()[-1] for n in os.listdir(d)))
"""


def mime(*scripts: tuple[str, str]) -> bytes:
    """A MIME multi-part document of #! scripts (filename, the word it echoes)."""
    return seed.multipart([seed.Part("x-shellscript", f"#!/bin/sh\necho {w}\n".encode(), n)
                           for n, w in scripts])  # fmt: skip


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_every_script_part_is_written_for_cloud_init_to_run(tmp_path: Path) -> None:
    """cloud-init writes each script part to instance/scripts/FILENAME and runs what is
    there: the site's vendor script and a user's of the same name (setup.sh) were one
    file, and only the user's ran; a name of non-ASCII letters became "" there, and
    that script was never written."""
    vendor = mime(("setup.sh", "site"))
    user = mime(("setup.sh", "mine"), ("データ", "data"), ("workspace.cfg", "cfg"))
    s = seed.render("box", "id1", (NIC,), user, vendor, [USER_KEY], HOST, "debian")
    out = cloud_init(SCRIPTS_SCRIPT, s.user_data, str(tmp_path))
    assert out.stderr == b""
    assert out.stdout.decode().strip() == "['cfg', 'data', 'mine', 'site']"
    names = [p.get_filename() for p in parts(s.user_data)]
    assert names == ["setup.sh", "setup.sh-2", "part-003", "workspace.cfg-2", "workspace.cfg"]


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_cloud_init_reads_our_user_data_as_multipart() -> None:
    """cloud-init's own user-data processor splits the document into our parts."""
    s = seed.render("box", "id1", (NIC,), b"#!/bin/sh\necho hi\n", b"", [USER_KEY], HOST, "debian")
    script = (
        "import sys\n"
        "sys.path.append('/usr/lib/python3/dist-packages')\n"
        "from cloudinit.user_data import UserDataProcessor\n"
        "msg = UserDataProcessor({}).process(sys.stdin.buffer.read())\n"
        "print([p.get_content_type() for p in msg.walk() if not p.is_multipart()])\n"
    )
    out = cloud_init(script, s.user_data)
    assert out.stdout.decode().strip() == "['text/x-shellscript', 'text/cloud-config']"


BY_FREQUENCY_SCRIPT = r"""
import os, sys
sys.path.append("/usr/lib/python3/dist-packages")
from cloudinit.handlers.shell_script_by_frequency import ShellScriptByFreqPartHandler
from cloudinit.settings import PER_ALWAYS, PER_INSTANCE
from cloudinit.user_data import UserDataProcessor
class Paths:
    def get_cpath(self, name):
        return os.path.join(sys.argv[1], name)
hs = {f"text/x-shellscript-per-{k}": ShellScriptByFreqPartHandler(f, Paths())
      for k, f in (("boot", PER_ALWAYS), ("instance", PER_INSTANCE))}
for part in UserDataProcessor({}).process(sys.stdin.buffer.read()).walk():
    if part.get_content_type() in hs:
        payload = part.get_payload(decode=True).decode()
        hs[part.get_content_type()].handle_part(
            None, part.get_content_type(), part.get_filename(), payload, None)
"""


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_a_script_by_frequency_is_kept_for_cloud_init_to_run(tmp_path: Path) -> None:
    """cloud-init runs a text/x-shellscript-per-boot (-per-instance, -per-once) part at
    that frequency; ws create refused the type (a script at every boot had no way in)."""
    user = (
        b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n--B\n'
        b"Content-Type: text/x-shellscript-per-boot\n"
        b'Content-Disposition: attachment; filename="mount.sh"\n\n'
        b"#!/bin/sh\nmount -a\n--B\n"
        b"Content-Type: text/x-shellscript-per-instance\n\n#!/bin/sh\necho once\n--B--\n"
    )
    userdata.check(user)
    s = seed.render("box", "id1", (NIC,), user, b"", [USER_KEY], HOST, "debian")
    cloud_init(BY_FREQUENCY_SCRIPT, s.user_data, str(tmp_path))
    boot = tmp_path / "scripts" / "per-boot" / "mount.sh"
    assert boot.read_text() == "#!/bin/sh\nmount -a"
    assert [p.name for p in (tmp_path / "scripts" / "per-instance").iterdir()] == ["user-data-2"]


RENDER_SCRIPT = r"""
import sys, yaml
sys.path.append("/usr/lib/python3/dist-packages")
from cloudinit.net import eni, network_state
state = network_state.parse_net_config_data(yaml.safe_load(sys.stdin.read()))
print(eni.Renderer()._render_interfaces(state))
"""


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
def test_ifupdown_gets_the_default_route_from_cloud_init() -> None:
    """What the installed cloud-init writes for ifupdown (the cloud appliance's renderer):
    the gateway as ifupdown's own line, no `route` command (net-tools is not there)."""
    out = cloud_init(RENDER_SCRIPT, seed.network_config((NIC, NIC2))).stdout.decode()
    assert "    address 10.0.0.5/24\n" in out and "    address 10.9.0.7/24\n" in out
    assert out.count("    gateway ") == 1 and "    gateway 10.0.0.1\n" in out
    assert "route add" not in out


@pytest.mark.skipif(not Path("/usr/bin/cloud-init").exists(), reason="no cloud-init here")
def test_the_services_part_passes_cloud_init_s_schema(tmp_path: Path) -> None:
    """An invalid key costs the guest a warning at every boot (and hides real ones); with
    the user's `users` as a list (ours: `users`) or a string (ours: `user`) too."""
    for user in (b"", b"#cloud-config\nusers: [alice]\n", b"#cloud-config\nusers: alice\n"):
        s = seed.render(
            "mpi-head-0", "id1", (NIC,), user, b"", [USER_KEY], HOST, "debian", three_members(),
            ("scratch",),
        )  # fmt: skip
        own = tmp_path / "workspace.cfg"
        own.write_bytes(payload(parts(s.user_data)[-1]))
        out = subprocess.run(
            ["/usr/bin/cloud-init", "schema", "--config-file", str(own)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Valid schema" in out.stdout or "Valid cloud-config" in out.stdout, out.stdout


def test_a_new_instance_of_a_saved_disk_keeps_only_the_keys_it_was_given(tmp_path: Path) -> None:
    """The seed's record of the keys a workspace was given, and its pruning script run
    for real (sh, awk, grep) on what a saved disk's next instance finds: the keys the
    service gave the first instance and not this one leave authorized_keys; this one's,
    and a key the user added by hand, stay."""
    old_key, new_key = USER_KEY, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnewnewnewnewnew new@x"
    hand = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQhand by-hand"
    first = own_config(
        seed.render("box", "id1", (NIC,), authorized_keys=[old_key], login_user="debian").user_data
    )
    second = own_config(
        seed.render("copy", "id2", (NIC,), authorized_keys=[new_key], login_user="debian").user_data
    )
    record = next(f for f in first["write_files"] if f["path"] == seed.KEYS_RECORD)
    assert record["content"] == old_key + "\n" and record["permissions"] == "0600"
    etc, home = tmp_path / "etc", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    etc.mkdir()
    # The disk as saved: the first instance's record; its authorized_keys as cc_ssh left
    # it, plus a key added by hand; then this instance's boot: set aside, record, append.
    (etc / "authorized_keys").write_text(record["content"])
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text(f"{old_key}\n{hand}\n")

    def local(text: str) -> str:
        return text.replace("/etc/workspace", str(etc)).replace(
            "$(getent passwd debian | cut -d: -f6)", str(home)
        )

    (_per, _instance, _name, *set_aside) = second["bootcmd"][0]
    subprocess.run([local(a) for a in set_aside], check=True)
    new_record = next(f for f in second["write_files"] if f["path"] == seed.KEYS_RECORD)
    (etc / "authorized_keys").write_text(new_record["content"])
    with keys.open("a") as f:
        f.write(new_key + "\n")
    ((sh, c, script),) = second["runcmd"]
    subprocess.run([sh, c, local(script)], check=True)
    assert keys.read_text().splitlines() == [hand, new_key]
    assert sorted(p.name for p in etc.iterdir()) == ["authorized_keys"]
    # A disk never saved (no record set aside): nothing is touched.
    subprocess.run([sh, c, local(script)], check=True)
    assert keys.read_text().splitlines() == [hand, new_key]


def boot_again(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], on_disk: list[str]
) -> list[str]:
    """The login user's authorized_keys after a saved disk's next boot, its pruning run
    for real: the disk holds ``first``'s record and ``on_disk``; ``second``'s seed sets the
    record aside, records its own keys, cloud-init appends its service keys, and the
    pruning runs."""
    etc, home = tmp_path / "etc", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    etc.mkdir()
    (etc / "authorized_keys").write_text(files(first)[seed.KEYS_RECORD]["content"])
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text("".join(k + "\n" for k in on_disk))

    def local(text: str) -> str:
        return text.replace("/etc/workspace", str(etc)).replace(
            "$(getent passwd debian | cut -d: -f6)", str(home)
        )

    (_per, _instance, _name, *set_aside) = second["bootcmd"][0]
    subprocess.run([local(a) for a in set_aside], check=True)
    (etc / "authorized_keys").write_text(files(second)[seed.KEYS_RECORD]["content"])
    with keys.open("a") as f:
        f.write("".join(k + "\n" for k in second["ssh_authorized_keys"]))
    ((sh, c, script),) = second["runcmd"]
    subprocess.run([sh, c, local(script)], check=True)
    return keys.read_text().splitlines()


def test_a_key_the_new_instances_user_data_lists_is_not_pruned(tmp_path: Path) -> None:
    """A saved disk's next instance whose user-data lists a key the earlier instance was
    given (top-level, or for the login user in `users`), its owner's service keys not
    holding it: cloud-init adds it, and the pruning keeps it (it took it out). Recorded,
    so the instance after, not asking for it, prunes it as it prunes service keys."""
    new_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnewnewnewnewnew new@x"
    other = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQother other@x"
    asked = (
        f"#cloud-config\nssh_authorized_keys: ['{USER_KEY}']\n"
        f"users: [default, {{name: debian, ssh_authorized_keys: ['{other}']}}]\n"
    )
    given = [USER_KEY, other]
    first = own_config(
        seed.render("box", "id1", (NIC,), authorized_keys=given, login_user="debian").user_data
    )
    second = own_config(
        seed.render(
            "copy", "id2", (NIC,), asked.encode(), authorized_keys=[new_key], login_user="debian"
        ).user_data
    )
    assert boot_again(tmp_path, first, second, [USER_KEY, other]) == [USER_KEY, other, new_key]
    recorded = files(second)[seed.KEYS_RECORD]["content"].splitlines()
    assert sorted(recorded) == sorted([new_key, USER_KEY, other])


def test_a_user_data_key_with_options_does_not_take_the_next_instances_keys(
    tmp_path: Path,
) -> None:
    """A key the user-data gives with authorized_keys options (``from=...``, or a
    ``cert-authority`` line) is recorded by its key alone: recorded as written, the
    pruning took its first field for the key ("ssh-ed25519") and the next instance of
    the saved disk lost every ed25519 key, the one the service had just given it too
    (`ws ssh` refused); a line that is no key at all took every key."""
    limited = f'from="10.0.0.0/8",no-agent-forwarding {USER_KEY}'
    authority = "cert-authority ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcacacacacaca ca@site"
    asked = f"#cloud-config\nssh_authorized_keys: ['{limited}', '{authority}', 'not-a-key']\n"
    service_key = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQservice me@x"
    new_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnewnewnewnewnew new@x"
    first = own_config(
        seed.render(
            "box", "id1", (NIC,), asked.encode(), authorized_keys=[service_key],
            login_user="debian",
        ).user_data
    )  # fmt: skip
    recorded = files(first)[seed.KEYS_RECORD]["content"].splitlines()
    assert sorted(recorded) == sorted([service_key, USER_KEY, authority.split(" ", 1)[1]])
    second = own_config(
        seed.render("copy", "id2", (NIC,), authorized_keys=[new_key], login_user="debian").user_data
    )
    hand = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhandhandhand by-hand"
    on_disk = [service_key, limited, authority, "not-a-key", hand]
    # The earlier instance's keys leave; the one put there by hand and the new one stay.
    assert boot_again(tmp_path, first, second, on_disk) == ["not-a-key", hand, new_key]


def test_a_saved_disks_next_owner_with_no_keys_and_no_cluster_gets_none_of_the_old_ones(
    tmp_path: Path,
) -> None:
    """A cluster member's disk, saved and then used for a single workspace whose owner
    has no SSH key yet: the earlier owner's key and the old cluster's key pair (which
    every member of the old cluster accepts) leave it. Before, a workspace given no keys
    had no pruning at all, and a cluster key pair in ~/.ssh was never pruned: the new
    instance's owner could log in to the old cluster's members with it. A key pair the
    user made there stays."""
    first = own_config(
        seed.render(
            "mpi-head-0", "id1", (NIC,), authorized_keys=[USER_KEY], login_user="debian",
            roster=three_members(),
        ).user_data
    )  # fmt: skip
    etc, home = tmp_path / "etc", tmp_path / "home"
    ssh = home / ".ssh"
    keys = ssh / "authorized_keys"

    def saved_disk(own_pair: str) -> None:
        """The disk as saved: the first instance's records and authorized_keys, the
        cluster key pair in ~/.ssh (or the user's own one), and an id_rsa.pub."""
        shutil.rmtree(tmp_path)
        ssh.mkdir(parents=True)
        etc.mkdir()
        by_path = files(first)
        for path in (seed.KEYS_RECORD, seed.CLUSTER_KEY_RECORD):
            (etc / Path(path).name).write_text(by_path[path]["content"])
        keys.write_text(by_path[seed.KEYS_RECORD]["content"])
        (ssh / "id_ed25519").write_text("PRIVATE\n")
        (ssh / "id_ed25519.pub").write_text(own_pair)
        (ssh / "id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQhand me\n")

    def boot(cfg: dict[str, Any]) -> None:
        """The next instance's first boot: set aside, record, then the pruning."""

        def local(text: str) -> str:
            return text.replace("/etc/workspace", str(etc)).replace(
                "$(getent passwd debian | cut -d: -f6)", str(home)
            )

        (_per, _instance, _name, *set_aside) = cfg["bootcmd"][0]
        subprocess.run([local(a) for a in set_aside], check=True)
        for path, f in files(cfg).items():
            if path.startswith("/etc/workspace/"):
                (etc / Path(path).name).write_text(f["content"])
        ((sh, c, script),) = cfg["runcmd"]
        subprocess.run([sh, c, local(script)], check=True)

    alone = own_config(seed.render("copy", "id2", (NIC,), login_user="debian").user_data)
    saved_disk(CLUSTER[1] + "\n")
    boot(alone)
    assert keys.read_text() == ""
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys", "id_rsa.pub"]
    assert sorted(p.name for p in etc.iterdir()) == ["authorized_keys", "workspace.json"]
    # The user's own laptop key, which they had copied into the guest: it stays.
    saved_disk(USER_KEY + "\n")
    boot(alone)
    assert sorted(p.name for p in ssh.iterdir()) == [
        "authorized_keys", "id_ed25519", "id_ed25519.pub", "id_rsa.pub",
    ]  # fmt: skip


CREDENTIALS_SCRIPT = r"""
import json, sys
sys.path.append("/usr/lib/python3/dist-packages")
import yaml
from cloudinit import ssh_util
from cloudinit.config import cc_ssh
cfg = yaml.safe_load(sys.stdin.read())
given = []
ssh_util.setup_user_keys = lambda keys, user, options=None: given.append([user, options or ""])
default_user = sys.argv[1] or None  # the image's (None: its cloud.cfg names none)
opts = cfg.get("disable_root_opts", ssh_util.DISABLE_USER_OPTS)
cc_ssh.apply_credentials(cfg["ssh_authorized_keys"], default_user, cfg["disable_root"], opts)
print(json.dumps(given))
"""


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
@pytest.mark.parametrize(("login", "default_user"), [("root", ""), ("debian", "debian")])
def test_the_login_user_gets_the_keys_without_a_refusing_command(
    login: str, default_user: str
) -> None:
    """cloud-init's cc_ssh as it hands out the keys: the login user gets them plainly.
    With `disable_root: true` always, an image whose login user is root (no default
    user in its cloud.cfg) got them behind "Please login as the user NONE": `ws ssh`
    could never log in, nor its cluster's members to each other."""
    s = seed.render("box", "id1", (NIC,), authorized_keys=[USER_KEY], login_user=login)
    out = cloud_init(CREDENTIALS_SCRIPT, payload(parts(s.user_data)[-1]), default_user)
    given = dict(json.loads(out.stdout))
    assert given[login] == ""
    if login != "root":  # root is still refused where another user logs in
        assert "Please login as the user" in given["root"]


@pytest.mark.parametrize(
    ("user_data", "rewrites"),
    [
        (b"#cloud-config\nmanage_etc_hosts: true\n", True),
        (b"#cloud-config\nmanage_etc_hosts: template\n", True),
        (b"#cloud-config\nmanage_etc_hosts: 'yes'\n", True),
        (b"#cloud-config\nmanage_etc_hosts: localhost\n", False),
        (b"#cloud-config\nmanage_etc_hosts: false\n", False),
        (b"#cloud-config\npackages: [htop]\n", False),
        (b"#!/bin/sh\necho manage_etc_hosts: true\n", False),  # a script sets nothing
        (b"", False),
    ],
)
def test_which_user_data_has_cloud_init_write_etc_hosts_at_every_boot(
    user_data: bytes, rewrites: bool
) -> None:
    assert seed.rewrites_etc_hosts(user_data) is rewrites


def test_the_last_cloud_config_part_to_set_manage_etc_hosts_decides() -> None:
    def two(first: bytes, second: bytes) -> bytes:
        return seed.multipart(
            [
                seed.Part("cloud-config", b"#cloud-config\n" + first, "a.cfg"),
                seed.Part("cloud-config", b"#cloud-config\n" + second, "b.cfg"),
            ]
        )

    assert seed.rewrites_etc_hosts(two(b"manage_etc_hosts: true\n", b"packages: [htop]\n"))
    assert not seed.rewrites_etc_hosts(
        two(b"manage_etc_hosts: true\n", b"manage_etc_hosts: localhost\n")
    )
    assert seed.rewrites_etc_hosts(two(b"manage_etc_hosts: false\n", b"manage_etc_hosts: true\n"))


def test_the_vendor_data_sets_manage_etc_hosts_unless_the_user_data_sets_it_after() -> None:
    """The site's vendor-data comes first in the seed (``render``): its value stands
    when the user-data sets none, and the user-data's replaces it."""
    vendor = b"#cloud-config\nmanage_etc_hosts: true\n"
    assert seed.rewrites_etc_hosts(b"", vendor)
    assert seed.rewrites_etc_hosts(b"#cloud-config\npackages: [htop]\n", vendor)
    assert not seed.rewrites_etc_hosts(b"#cloud-config\nmanage_etc_hosts: localhost\n", vendor)
    assert seed.rewrites_etc_hosts(
        b"#cloud-config\nmanage_etc_hosts: true\n", b"#cloud-config\nmanage_etc_hosts: false\n"
    )


def slurm_rule_part(body: bytes) -> bytes:
    """User-data as ws-slurm makes it for a rule with its own #cloud-config: the rule's
    part first, with a Merge-Type that keeps what parts before it set."""
    return seed.multipart(
        [
            seed.Part(
                "cloud-config",
                b"#cloud-config\n" + body,
                "ws-slurm-0",
                "dict(recurse_array,no_replace)+list(append)",
            ),
            seed.Part("cloud-config", b"#cloud-config\nruncmd: [[true]]\n", "ws-slurm-1"),
        ]
    )


TRUE = b"#cloud-config\nmanage_etc_hosts: true\n"
LOCALHOST = b"#cloud-config\nmanage_etc_hosts: localhost\n"


@pytest.mark.skipif(not CLOUD_INIT.exists(), reason="cloud-init is not installed here")
@pytest.mark.parametrize(
    ("user_data", "vendor_data"),
    [
        (b"", TRUE),
        (LOCALHOST, TRUE),
        (TRUE, b"#cloud-config\nmanage_etc_hosts: false\n"),
        # A part that keeps what came before does not undo the vendor-data's value:
        # ws-slurm's rule part, a body's own merge_how, a bare dict() (no_replace).
        (slurm_rule_part(b"manage_etc_hosts: localhost\n"), TRUE),
        (b"#cloud-config\nmerge_how: dict()+list()\nmanage_etc_hosts: localhost\n", TRUE),
        (b"#cloud-config\nmerge_how: list(append)\nmanage_etc_hosts: localhost\n", TRUE),
        (b"#cloud-config\nmerge_how: dict(replace)+list()\nmanage_etc_hosts: localhost\n", TRUE),
        (
            b"#cloud-config\nmerge_how: [{name: dict, settings: [no_replace]}]\n"
            b"manage_etc_hosts: localhost\n",
            TRUE,
        ),
        (slurm_rule_part(b"manage_etc_hosts: true\n"), b""),
        (slurm_rule_part(b"manage_etc_hosts: true\n"), LOCALHOST),
    ],
)
def test_manage_etc_hosts_is_read_as_cloud_init_merges_the_parts(
    user_data: bytes, vendor_data: bytes
) -> None:
    """What ``rewrites_etc_hosts`` says is what cloud-init's own mergers make of a
    member's seed: the site's vendor-data, the user's parts, then the service's (whose
    ``manage_etc_hosts: false`` keeps what came before). It read the last part to set
    the key: ws-slurm's rule part, which keeps what came before (its Merge-Type), setting
    ``localhost`` after a vendor-data's ``true`` was taken for a fix that was none."""
    s = seed.render(
        "mpi-w-0",
        "id1",
        (NIC,),
        user_data,
        vendor_data,
        [USER_KEY],
        HOST,
        "debian",
        three_members(),
    )
    merged = json.loads(cloud_init(MERGE_SCRIPT, s.user_data).stdout)
    value = merged.get("manage_etc_hosts")
    by_cloud_init = value is not None and str(value).lower() in ("true", "template")
    assert seed.rewrites_etc_hosts(user_data, vendor_data) is by_cloud_init
