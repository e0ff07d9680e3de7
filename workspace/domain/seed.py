"""A workspace's cloud-init NoCloud seed, rendered from plain inputs (pure: no store, no
protos). docs/design/contextualization.md says what goes in and why.

* ``meta-data``: instance-id (the workspace id) and local-hostname (JSON, which is YAML).
* ``network-config``: version 2, every NIC matched by its MAC, its address from the
  pool set statically (with the gateway's default route and the DNS servers).
* ``user-data``: one MIME multi-part document: the site's vendor-data, then the user's
  user-data exactly as given (a multi-part one is flattened into its parts), then the
  service's own cloud-config, last, with ``merge_how`` ``dict(no_replace,recurse_list)+
  list(append)+str()``: its lists (write_files, ssh_authorized_keys) are appended to the
  user's, its mappings merged key by key, and a value the user set on purpose stays.

The service's part carries the guest's SSH host key (``ssh_keys``, with
``ssh_deletekeys`` and nothing generated, so the guest has exactly the key the service
vouches for), the authorized keys, the workspace's ext4 blank disks mounted at
/mnt/<partition> (``mounts``, by the filesystem UUID the node gives each one, their top
directory then handed to the login user) and, for a cluster member, the roster:
/etc/hosts, /etc/workspace/cluster.json, /etc/ssh/ssh_known_hosts and the cluster's key
pair for the login user. It is written as JSON (valid YAML, and fast for a large roster).
"""

from __future__ import annotations

import email.encoders
import email.message
import email.policy
import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from typing import Any

import yaml

from images.mkfs import fs_uuid
from workspace.domain import userdata
from workspace.domain.model import Nic, Seed

# How the service's part merges onto the user's parts (cloud-init's mergers).
MERGE_HOW = "dict(no_replace,recurse_list)+list(append)+str()"
LOCALHOST_LINES = (
    "127.0.0.1 localhost",
    "::1 localhost ip6-localhost ip6-loopback",
    "ff02::1 ip6-allnodes",
    "ff02::2 ip6-allrouters",
)
# MIME subtypes of user-data documents by their kind (workspace/domain/userdata.py).
SUBTYPES = {
    "cloud-config": "cloud-config",
    "script": "x-shellscript",
    "boothook": "cloud-boothook",
}
# The filename of the service's own part.
OWN_PART = "workspace.cfg"
# Where an ext4 blank disk is mounted in the guest: /mnt/<partition name>.
MOUNT_ROOT = "/mnt"


@dataclass(frozen=True)
class Member:
    """One member of a cluster as every member sees it."""

    name: str  # <cluster>-<role>-<i>
    role: str
    index: int  # within its role
    addresses: tuple[str, ...]  # one per NIC, in NIC order
    host_key: str = ""  # its SSH host public key line ("": none)

    @property
    def alias(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass(frozen=True)
class Roster:
    """A cluster: its name, every member, and its own SSH key pair."""

    cluster: str
    members: tuple[Member, ...]
    key_private: str = ""
    key_public: str = ""


def member_index(name: str) -> int:
    """The index of a member within its role, from its name ``<cluster>-<role>-<i>``."""
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


# -- the three documents -----------------------------------------------------------------


def meta_data(instance_id: str, hostname: str) -> bytes:
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=2).encode()


def _gateway_key(ip: str) -> str:
    return "gateway6" if ":" in ip else "gateway4"


def network_config(nics: Sequence[Nic]) -> bytes:
    """Version 2: each NIC by MAC, static from the pool; the first NIC with a gateway
    carries the default route, as ``gateway4``/``gateway6``: cloud-init renders a
    ``routes`` entry for ifupdown as ``post-up route add ... || true``, which needs
    net-tools (not in a minimal Debian image, ours included), so the guest silently had
    no default route; a gateway becomes ifupdown's own ``gateway`` line (and networkd's
    ``Gateway=``)."""
    ethernets: dict[str, object] = {}
    routed = False
    for i, nic in enumerate(nics):
        eth: dict[str, object] = {"match": {"macaddress": nic.mac.lower()}}
        if nic.ip:
            eth["addresses"] = [f"{nic.ip}/{nic.prefix_len}"]
            if nic.gateway and not routed:
                eth[_gateway_key(nic.ip)] = nic.gateway
                routed = True
            if nic.dns:
                eth["nameservers"] = {"addresses": list(nic.dns)}
        else:
            eth["dhcp4"] = True
        ethernets[f"nic{i}"] = eth
    doc = {"version": 2, "ethernets": ethernets}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).encode()


def _hosts(roster: Roster) -> str:
    lines = list(LOCALHOST_LINES)
    for m in roster.members:
        if m.addresses:
            lines.append(f"{m.addresses[0]} {m.name} {m.alias}")
    return "\n".join(lines) + "\n"


def _known_hosts(roster: Roster) -> str:
    lines = []
    for m in roster.members:
        if m.host_key:
            names = ",".join([m.name, m.alias, *m.addresses])
            lines.append(f"{names} {_key_only(m.host_key)}")
    return "\n".join(lines) + "\n" if lines else ""


def _key_only(line: str) -> str:
    """``TYPE BASE64`` of a public key line (its comment dropped)."""
    return " ".join(line.split()[:2])


def cluster_json(roster: Roster, me: Member) -> str:
    doc = {
        "cluster": roster.cluster,
        "name": me.name,
        "role": me.role,
        "index": me.index,
        "members": [
            {"name": m.name, "role": m.role, "index": m.index, "addresses": list(m.addresses)}
            for m in roster.members
        ],
    }
    return json.dumps(doc, indent=1) + "\n"


def roster_files(roster: Roster, hostname: str) -> list[tuple[str, str]]:
    """(path, content) of the roster files of member ``hostname`` (mode 0644): /etc/hosts,
    /etc/workspace/cluster.json and /etc/ssh/ssh_known_hosts ("" when no member has a
    host key). A first boot writes them from the seed; a scale rewrites them in the
    running members (ops/rosters.py)."""
    me = next((m for m in roster.members if m.name == hostname), None)
    if me is None:
        me = Member(hostname, "", member_index(hostname), ())
    return [
        ("/etc/hosts", _hosts(roster)),
        ("/etc/workspace/cluster.json", cluster_json(roster, me)),
        ("/etc/ssh/ssh_known_hosts", _known_hosts(roster)),
    ]


def roster_digest(files: Sequence[tuple[str, str]]) -> str:
    """A digest of roster files (what a running member was last given)."""
    h = hashlib.sha256()
    for path, content in files:
        h.update(path.encode() + b"\0" + content.encode() + b"\0")
    return h.hexdigest()


def _home(user: str) -> str:
    return f"/home/{user}" if user and user != "root" else "/root"


def mount_point(partition: str) -> str:
    return f"{MOUNT_ROOT}/{partition}"


def _mounts(
    instance_id: str, data_disks: Sequence[str], login_user: str
) -> tuple[list[list[str]], list[list[str]]]:
    """cloud-config ``mounts`` entries mounting each ext4 blank disk at /mnt/<name>
    (``nofail``: a guest still boots without it), and the ``runcmd`` line (if any) giving
    their top directories to the login user once, at the first boot. cloud-init's
    ``mounts`` takes a device path, not ``UUID=``; the /dev/disk/by-uuid link names the
    filesystem the node made (``images.mkfs.fs_uuid``)."""
    mounts = [
        [
            f"/dev/disk/by-uuid/{fs_uuid(instance_id, name)}",
            mount_point(name),
            "ext4",
            "defaults,nofail",
            "0",
            "2",
        ]
        for name in data_disks
    ]
    if not login_user or login_user == "root":
        return mounts, []
    dirs = " ".join(mount_point(name) for name in data_disks)
    give = f'for d in {dirs}; do mountpoint -q "$d" && chown {login_user}: "$d"; done; true'
    return mounts, [["sh", "-c", give]]


def system_config(
    hostname: str,
    instance_id: str,
    authorized_keys: Sequence[str],
    host_key: tuple[str, str],
    login_user: str,
    roster: Roster | None,
    data_disks: Sequence[str] = (),
    users_given: str = "",
    fqdn_given: bool = False,
    asked_keys: Sequence[str] = (),
) -> dict[str, object]:
    """The service's own cloud-config (as a mapping). ``data_disks``: the names of the
    workspace's ext4 blank partitions; ``users_given``: how an earlier part (the user's,
    the site's) sets ``users`` ("list", "string", "mapping"; "" not), which replaces the
    image's list (``[default]``): ours then keeps the default user in it, since the
    authorized keys go to the default user only; ``fqdn_given``: an earlier part sets
    ``fqdn``, whose first label is then the hostname (no ``hostname`` of ours);
    ``asked_keys``: the keys an earlier part gives the login user (recorded with ours:
    a saved disk's pruning keeps them)."""
    private, public = host_key
    cfg: dict[str, object] = {"merge_how": MERGE_HOW}
    if not fqdn_given:
        # cloud-init takes the hostname from `fqdn` only when `hostname` is not set:
        # ours (merged in, as the user set none) made `fqdn: node1.example.org` a
        # guest named after the workspace, its /etc/hosts naming both.
        cfg["hostname"] = hostname
    cfg.update(
        {
            "preserve_hostname": False,
            # Root logins are refused (cloud-init prefixes root's keys with a command that
            # only says "Please login as the user ...") unless root is the user ws ssh
            # logs in as: an image whose login_user is root could not be logged in to.
            "disable_root": login_user != "root",
        }
    )
    if users_given and login_user and login_user != "root":
        # `users: [{name: alice}]` without `- default` (cloud-init's own trap) would
        # leave the login user uncreated and the keys on a disabled root: `ws ssh`
        # refused, the cluster key written to a home that does not exist. The list is
        # appended to (MERGE_HOW), so the user's accounts stay.
        if users_given == "list":
            cfg["users"] = ["default"]
        else:
            # `users: alice` or `users: {alice: {...}}` (forms cloud-init still reads):
            # a list of ours would replace theirs, and is not merged into a mapping.
            # `user:` names the default user, and cloud-init then adds `default` to
            # `users` in any form (ug_util.normalize_users_groups); one the user set
            # stays theirs (MERGE_HOW), as does an explicit `default: false`.
            cfg["user"] = {"name": login_user}
    if private:
        cfg["ssh_deletekeys"] = True
        # Nothing is generated: the ed25519 key is given, and a type whose key exists is
        # skipped. (An empty list means the same to cc_ssh but fails cloud-init's schema,
        # minItems 1, which warns "Invalid cloud-config" at every boot.)
        cfg["ssh_genkeytypes"] = ["ed25519"]
        cfg["ssh_keys"] = {"ed25519_private": private, "ed25519_public": public}
    keys = [*authorized_keys]
    files: list[dict[str, object]] = []
    if roster is None:
        about = {"name": hostname, "id": instance_id}
        files.append(_file("/etc/workspace/workspace.json", json.dumps(about) + "\n", "0644"))
    else:
        cfg["manage_etc_hosts"] = False
        for path, content in roster_files(roster, hostname):
            if content:
                files.append(_file(path, content, "0644"))
        if roster.key_private:
            keys.append(roster.key_public)
            if login_user:
                files.append(_file(CLUSTER_KEY_RECORD, roster.key_public + "\n", "0644"))
            home = _home(login_user)
            owner = f"{login_user}:{login_user}" if login_user else "root:root"
            for path, content, mode in (
                (f"{home}/.ssh/id_ed25519", roster.key_private, "0600"),
                (f"{home}/.ssh/id_ed25519.pub", roster.key_public + "\n", "0644"),
            ):
                f = _file(path, content, mode)
                f["owner"] = owner
                f["defer"] = True  # after the login user exists
                files.append(f)
    runcmd: list[list[str]] = []
    if keys:
        cfg["ssh_authorized_keys"] = keys
    if login_user:
        # Also with no keys (an owner who has none yet): the disk may be a saved one,
        # whose earlier owner's keys must leave it all the same.
        # With the keys the user-data gives it: an earlier instance's key that this one's
        # user-data lists again was taken out at its first boot.
        recorded = dict.fromkeys([*keys, *asked_keys])
        files.append(_file(KEYS_RECORD, "".join(k + "\n" for k in recorded), "0600"))
        cfg["bootcmd"] = [KEYS_SET_ASIDE]
        runcmd.append(["sh", "-c", _prune_script(login_user)])
    cfg["write_files"] = files
    if data_disks:
        cfg["mounts"], chown = _mounts(instance_id, data_disks, login_user)
        runcmd.extend(chown)
    if runcmd:
        cfg["runcmd"] = runcmd
    return cfg


# The keys the service gave this instance's login user, recorded in the guest, so that
# a later instance of a disk saved from it (`ws image save`) can take out the ones it was
# not given: cloud-init only ever adds to authorized_keys. At a new instance's first
# boot, before write_files records its own keys, the record found is set aside
# (``cloud-init-per instance``: once per instance); at its end the set-aside keys this
# instance was not given leave the login user's authorized_keys (matched by their
# base64 blob; a key the user put there by hand stays; the keys the user-data gives
# the login user are recorded too).
KEYS_RECORD = "/etc/workspace/authorized_keys"
KEYS_PREVIOUS = KEYS_RECORD + ".previous"
# A cluster member's record of its cluster's public key (the pair it was given in ~/.ssh).
CLUSTER_KEY_RECORD = "/etc/workspace/cluster_key.pub"
CLUSTER_KEY_PREVIOUS = CLUSTER_KEY_RECORD + ".previous"
KEYS_SET_ASIDE = [
    "cloud-init-per",
    "instance",
    "workspace-keys-previous",
    "sh",
    "-c",
    f"for r in {KEYS_RECORD} {CLUSTER_KEY_RECORD}; do "
    'if [ -f "$r" ]; then mv -f "$r" "$r.previous"; fi; done',
]


def _prune_script(login_user: str) -> str:
    # FILENAME == ARGV[1], not NR == FNR: the record of an instance given no keys is
    # empty, and NR == FNR then holds for every line of the old record (nothing pruned).
    # The old instance's cluster key pair in ~/.ssh (id_ed25519, its public half as in
    # the set-aside cluster record) goes too when this instance was not given that key:
    # with it the disk's next owner could log in to every member of the old cluster. A
    # new member's own pair was written before this runs (write-files-deferred); a pair
    # the user made or copied there is not the recorded one and stays.
    return (
        f"prev={KEYS_PREVIOUS}; [ -f $prev ] || exit 0; "
        f'home=$(getent passwd {login_user} | cut -d: -f6); f="$home/.ssh/authorized_keys"; '
        "awk 'FILENAME == ARGV[1] {keep[$2]=1; next} !($2 in keep) {print $2}' "
        f'{KEYS_RECORD} $prev > $prev.stale; if [ -s $prev.stale ] && [ -f "$f" ]; then '
        'grep -vF -f $prev.stale "$f" > "$f.new"; cat "$f.new" > "$f"; rm -f "$f.new"; fi; '
        f'old={CLUSTER_KEY_PREVIOUS}; k="$home/.ssh/id_ed25519"; if [ -f $old ]; then '
        "blob=$(cut -d' ' -f2 $old); "
        'if grep -qxF "$blob" $prev.stale && [ -f "$k.pub" ] && grep -qF "$blob" "$k.pub"; '
        'then rm -f "$k" "$k.pub"; fi; fi; '
        "rm -f $prev $prev.stale $old"
    )


def _file(path: str, content: str, mode: str) -> dict[str, object]:
    return {"path": path, "content": content, "permissions": mode, "owner": "root:root"}


# -- user-data: the MIME multi-part document ---------------------------------------------


@dataclass(frozen=True)
class Part:
    subtype: str  # text/<subtype>
    payload: bytes
    filename: str
    merge_type: str = ""


def parts_of(data: bytes, filename: str) -> list[Part]:
    """A user-data document as MIME parts: one for a plain document, the leaf parts of a
    multi-part one (with their own types, filenames and merge types)."""
    if not data:
        return []
    found = userdata.kind(data)
    if found != "multipart":
        return [Part(SUBTYPES.get(found, "plain"), data, filename)]
    msg = email.message_from_bytes(data)
    out = []
    for i, p in enumerate((p for p in msg.walk() if not p.is_multipart()), 1):
        raw = p.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        merge = str(p.get("Merge-Type") or p.get("X-Merge-Type") or "")
        name = p.get_filename() or f"{filename}-{i}"
        out.append(Part(p.get_content_subtype(), payload, name, merge))
    return out


# The characters cloud-init keeps of a part's filename (util.clean_filename: "/" becomes
# "_", the others are dropped); a script part is written under that name and run from there.
_FN_ALLOWED = frozenset("_-.()" + string.digits + string.ascii_letters)


def _clean_filename(name: str) -> str:
    return "".join(c for c in name.replace("/", "_") if c in _FN_ALLOWED).strip()


def distinct_names(parts: Sequence[Part], taken: Sequence[str] = ()) -> list[Part]:
    """``parts`` with filenames cloud-init writes apart: each as cloud-init cleans it,
    and one already used (by an earlier part or ``taken``), or that cleans to nothing (a
    name of non-ASCII letters), made ``NAME-2``... or ``part-N``. cloud-init writes each
    script part to instance/scripts/NAME: a vendor script and a user's of one name
    (``setup.sh``) left one file, and only the user's ran; a name it cleans to "" made
    the write fail, and that script never ran."""
    used = set(taken)
    out = []
    for i, p in enumerate(parts, 1):
        base = _clean_filename(p.filename)
        if base in ("", ".", ".."):
            base = f"part-{i:03d}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        out.append(p if name == p.filename else replace(p, filename=name))
    return out


def _is_cloud_config(p: Part) -> bool:
    return p.subtype == "cloud-config" or (
        p.subtype == "plain" and userdata.kind(p.payload) == "cloud-config"
    )


def _form(p: Part, key: str) -> str:
    """How part ``p`` sets top-level ``key`` (``userdata.form_of``; "" when it is no
    cloud-config or does not set it)."""
    return userdata.form_of(p.payload, key) if _is_cloud_config(p) else ""


def default_user(user_data: bytes) -> str:
    """The name user-data gives the image's default user: cloud-init's ``user: NAME``
    or ``user: {name: NAME}`` (the last cloud-config part to name one), which the
    authorized keys then go to; "" when it names none (or no valid account name)."""
    named = ""
    for p in parts_of(user_data, "user-data"):
        if _is_cloud_config(p) and _form(p, "user"):
            named = userdata.default_user_of(p.payload) or named
    return named


# What cloud-init takes for "render /etc/hosts from its template at every boot"
# (cc_update_etc_hosts: util.translate_bool with the addon "template").
_TEMPLATE_HOSTS = frozenset({"true", "1", "on", "yes", "y", "template"})


def rewrites_etc_hosts(user_data: bytes, vendor_data: bytes = b"") -> bool:
    """Whether ``user_data`` (after the site's ``vendor_data``, whose parts come first
    in the seed, as ``render`` puts them) has cloud-init write /etc/hosts anew from its
    template at every boot (``manage_etc_hosts: true`` or ``template``, as cloud-init
    merges the cloud-config parts: ``_merged_scalar``); ``localhost`` and ``false`` keep
    the file's other lines."""
    parts = [*parts_of(vendor_data, "vendor-data"), *parts_of(user_data, "user-data")]
    value = _merged_scalar(parts, "manage_etc_hosts")
    return value is not None and str(value).strip().lower() in _TEMPLATE_HOSTS


# cloud-init's merger names ("dict(no_replace,recurse_list)"): mergers.NAME_MTHD_CHOPPER.
_MERGER = re.compile(r"(^[a-zA-Z_][A-Za-z0-9_]*)\((.*?)\)$")
# How a part merges onto those before it when it says nothing: DEF_MERGERS.
_DEFAULT_DICT_OPTIONS = ("replace",)


def _dict_options(p: Part, doc: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The options of part ``p``'s dict merger (cloud-init's handlers/cloud_config.py:
    the mergers its body names in ``merge_how`` or ``merge_type``, then its
    ``Merge-Type`` header's; none named: the default, ``dict(replace)``); None when it
    names mergers but no dict one: cloud-init then merges none of its keys. ``doc``:
    the part's top-level keys."""
    named: object = doc.get("merge_how")
    if named is None:
        named = doc.get("merge_type")
    found: list[tuple[str, tuple[str, ...]]] = []
    for spec in (named, p.merge_type):
        if isinstance(spec, str):
            for m in spec.split("+"):
                match = _MERGER.match(m.lower().strip().replace("-", "_"))
                if match:
                    opts = (o.strip().lower() for o in match.group(2).split(","))
                    found.append((match.group(1), tuple(o for o in opts if o)))
        elif isinstance(spec, list):
            for m in spec:
                if isinstance(m, dict) and isinstance(m.get("name"), str):
                    found.append(
                        (m["name"].replace("-", "_").strip(), tuple(m.get("settings") or ()))
                    )
                elif isinstance(m, list) and m and isinstance(m[0], str):
                    found.append((m[0], tuple(str(o) for o in m[1:])))
    if not found:
        return _DEFAULT_DICT_OPTIONS
    return next((opts for name, opts in found if name == "dict"), None)


def _merged_scalar(parts: Sequence[Part], key: str) -> object:
    """The top-level ``key`` of the cloud-config ``parts`` merged in order, as cloud-init
    merges them (mergers/m_dict.py): a part whose dict merger replaces sets it; one that
    does not ("no_replace", the service's own MERGE_HOW, ws-slurm's Merge-Type) sets it
    only where no part before did; one without a dict merger sets nothing. None: unset."""
    merged: dict[str, object] = {}
    for p in parts:
        if not _is_cloud_config(p):
            continue
        doc = userdata.top_level(p.payload)
        if key not in doc or (options := _dict_options(p, doc)) is None:
            continue
        if "replace" in options or key not in merged:
            merged[key] = doc[key]
    return merged.get(key)


def given(parts: Sequence[Part], key: str) -> str:
    """How the last of ``parts`` to set ``key`` sets it (each replaces the one before,
    cloud-init's default merging): "list", "string", "mapping", ... or "" (none does)."""
    forms = [form for form in (_form(p, key) for p in parts) if form]
    return forms[-1] if forms else ""


def users_given(parts: Sequence[Part]) -> str:
    """How the last of ``parts`` to set ``users`` sets it ("" none does)."""
    return given(parts, "users")


def _mime_part(p: Part) -> MIMENonMultipart:
    part = MIMENonMultipart("text", p.subtype, charset="utf-8")
    part.set_payload(p.payload)
    email.encoders.encode_base64(part)
    part.add_header("Content-Disposition", "attachment", filename=p.filename)
    if p.merge_type:
        part["Merge-Type"] = p.merge_type
    return part


def multipart(parts: Sequence[Part]) -> bytes:
    """The parts as one MIME multi-part document, byte for byte the same for the same
    parts (the boundary is derived from their content)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.subtype.encode() + b"\0" + p.filename.encode() + b"\0" + p.payload)
    boundary = "==ws-" + h.hexdigest()[:32]
    msg = MIMEMultipart("mixed", boundary=boundary)
    for p in parts:
        msg.attach(_mime_part(p))
    return msg.as_bytes(policy=email.policy.SMTP.clone(linesep="\n"))


def render(
    hostname: str,
    instance_id: str,
    nics: Sequence[Nic],
    user_data: bytes = b"",
    vendor_data: bytes = b"",
    authorized_keys: Sequence[str] = (),
    host_key: tuple[str, str] = ("", ""),
    login_user: str = "",
    roster: Roster | None = None,
    data_disks: Sequence[str] = (),
) -> Seed:
    """The seed of one workspace. ``host_key``: (OpenSSH PEM private, public line);
    ``roster``: the cluster the workspace is a member of (None: a single workspace);
    ``data_disks``: its ext4 blank partitions, mounted at /mnt/<name>."""
    theirs = distinct_names(
        [*parts_of(vendor_data, "vendor-data"), *parts_of(user_data, "user-data")],
        (OWN_PART,),
    )
    cfg = system_config(
        hostname,
        instance_id,
        authorized_keys,
        host_key,
        login_user,
        roster,
        data_disks,
        users_given(theirs),
        given(theirs, "fqdn") != "",
        [
            k
            for p in theirs
            if _is_cloud_config(p)
            for k in userdata.keys_for(p.payload, login_user)
        ],
    )
    own = ("#cloud-config\n" + json.dumps(cfg, indent=1) + "\n").encode()
    parts = [*theirs, Part("cloud-config", own, OWN_PART)]
    return Seed(
        meta_data=meta_data(instance_id, hostname),
        user_data=multipart(parts),
        network_config=network_config(nics),
    )
