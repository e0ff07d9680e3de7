"""Cluster specs for `ws cluster create` (workspace/cli/clusterspec.py): TOML and JSON
files with the file, line and field of each error, the --member and --require flags, and
the short enum names they accept."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest

from tests.unit.cluster_examples import MPI_TOML
from tests.unit.cluster_examples import write_spec as _write
from workspace.cli import clusterspec
from workspace.client import affinity_value, failure_policy_value
from workspace.v1 import clusters_pb2, common_pb2

# -- TOML specs ----------------------------------------------------------------------


def test_toml_spec_with_two_roles(tmp_path: Path) -> None:
    req = clusterspec.load(_write(tmp_path, MPI_TOML))
    assert (req.name, req.wait_for_capacity_s) == ("mpi", 600)
    assert req.affinity == clusters_pb2.AFFINITY_SOFT_ANTI
    assert req.on_failure == clusters_pb2.FAILURE_POLICY_TEARDOWN
    head, worker = req.members
    assert (head.role, head.image, head.cpus, head.memory_mib, head.count) == (
        "head",
        "appliance",
        1,
        256,
        1,
    )
    assert list(head.networks) == ["default"] and dict(head.requirements) == {"gpu": "1"}
    assert (worker.image, worker.count, list(worker.networks)) == (
        "debian-12:hpc",
        16,
        ["default", "ib"],
    )
    assert dict(worker.requirements) == {"hypervisor": "kvm"}
    assert req.request_id == ""  # the client adds one


def test_toml_defaults_and_overrides(tmp_path: Path) -> None:
    text = '[[members]]\nrole = "a"\nimage = "i"\nrequirements = { gpu = 1, fast = true }\n'
    path = _write(tmp_path, text)
    req = clusterspec.load(path, name="given")
    assert req.name == "given" and req.affinity == clusters_pb2.AFFINITY_NONE
    m = req.members[0]
    assert (m.count, m.cpus, m.memory_mib, list(m.networks)) == (1, 0, 0, [])
    assert dict(m.requirements) == {"gpu": "1", "fast": "true"}
    # NAME on the command line replaces the spec's name
    assert clusterspec.load(_write(tmp_path, MPI_TOML), name="mpi2").name == "mpi2"


def test_toml_sub_tables_and_user_data(tmp_path: Path) -> None:
    (tmp_path / "ctx.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    text = """\
name = "c"
[[members]]
role = "a"
image = "i"
user_data_file = "ctx.sh"
[members.requirements]
gpu = "2"
[[members]]
role = "b"
image = "i"
user_data = "plain"
"""
    a, b = clusterspec.load(_write(tmp_path, text)).members
    assert a.user_data == b"#!/bin/sh\necho hi\n" and dict(a.requirements) == {"gpu": "2"}
    assert b.user_data == b"plain"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\nmembers = [', "spec.toml: not valid TOML: "),
        ('name = "x"\naffinty = "soft"\n', "spec.toml:2: affinty: unknown key"),
        ('name = "x"\n', "spec.toml: members: missing: add at least one [[members]] table"),
        ('name = "x"\nmembers = []\n', "spec.toml:2: members: the cluster needs at least one"),
        ('name = "x"\nmembers = 3\n', "spec.toml:2: members: must be an array of tables"),
        ("name = 7\n", "spec.toml:1: name: must be a string, got 7"),
        (
            'name = "x"\naffinity = "sideways"\n',
            "spec.toml:2: affinity: 'sideways' is not one of none, soft-anti, hard-anti",
        ),
        (
            'name = "x"\non_failure = "retry"\n',
            "spec.toml:2: on_failure: 'retry' is not one of keep, teardown",
        ),
        (
            'name = "x"\nwait_for_capacity_s = -1\n',
            "spec.toml:2: wait_for_capacity_s: must be a whole number of at least 0, got -1",
        ),
        (
            'name = "x"\n\n[[members]]\nrole = "head"\n',
            "spec.toml:3: members[0].image: missing",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            '[[members]]\nrole = "b"\nimage = "i"\ncpus = "two"\n',
            'spec.toml:8: members[1].cpus: must be a whole number of at least 1, got "two"',
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\ncount = 0\n',
            "spec.toml:5: members[0].count: must be a whole number of at least 1, got 0",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nmemory_mib = true\n',
            "spec.toml:5: members[0].memory_mib: must be a whole number of at least 1, got true",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            '[[members]]\nrole = "a"\nimage = "j"\n',
            "spec.toml:6: members[1].role: 'a' is already used by members[0]",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\ncpu = 2\n',
            "spec.toml:5: members[0].cpu: unknown key (known: role, image, count, cpus",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nnetworks = "default"\n',
            "spec.toml:5: members[0].networks: must be a list of network names",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nrequirements = ["gpu"]\n',
            "spec.toml:5: members[0].requirements: must be a table",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nrequirements = { gpu = 1.5 }\n',
            "spec.toml:5: members[0].requirements: gpu: must be a string or whole number",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "  "\n',
            "spec.toml:4: members[0].image: must not be empty",
        ),
        (
            'name = "x"\nmembers = [{ role = "a", image = "i", cpus = 0 }]\n',
            "spec.toml:2: members[0].cpus: must be a whole number of at least 1, got 0",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            'user_data = "a"\nuser_data_file = "b"\n',
            "spec.toml:6: members[0].user_data_file: give user_data or user_data_file, not both",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nuser_data_file = "nope.sh"\n',
            "spec.toml:5: members[0].user_data_file: ",
        ),
        (
            '[[members]]\nrole = "a"\nimage = "i"\n',
            "spec.toml: name: the cluster needs a name",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nblank = "s:1GiB"\n',
            'spec.toml:5: members[0].blank: must be a list, e.g. ["scratch:10GiB:ext4"]',
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nblank = ["s:1GiB:xfs"]\n',
            "spec.toml:5: members[0].blank: expected NAME:SIZE[:ext4], got 's:1GiB:xfs'",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nblank = ["s:lots"]\n',
            "spec.toml:5: members[0].blank: s: ",
        ),
    ],
)
def test_bad_toml_specs_name_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(clusterspec.SpecError) as exc:
        clusterspec.load(path)
    assert exc.value.message.startswith(str(tmp_path / expected)), exc.value.message
    assert "\n" not in exc.value.message


def test_blank_disks_of_a_role(tmp_path: Path) -> None:
    text = (
        'name = "x"\n[[members]]\nrole = "head"\nimage = "i"\n'
        '[[members]]\nrole = "w"\nimage = "i"\ncount = 2\n'
        'blank = ["scratch:10GiB:ext4", "raw:64MiB"]\n'
    )
    head, worker = clusterspec.load(_write(tmp_path, text)).members
    assert list(head.extra_partitions) == []
    disks = [(p.name, p.size_bytes, p.ext4, p.mode) for p in worker.extra_partitions]
    blank = common_pb2.PARTITION_MODE_BLANK
    assert disks == [("scratch", 10 * 2**30, True, blank), ("raw", 64 * 2**20, False, blank)]
    # the same on the command line: blank= once per disk
    m = clusterspec.member_arg("w=i,count=2,blank=scratch:10GiB:ext4,blank=raw:64MiB")
    assert list(m.extra_partitions) == list(worker.extra_partitions) and m.count == 2


def test_toml_syntax_error_says_where(tmp_path: Path) -> None:
    with pytest.raises(clusterspec.SpecError, match=r"at line 3"):
        clusterspec.load(_write(tmp_path, 'name = "x"\n\nrole = \n'))


def test_spec_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(clusterspec.SpecError, match="not UTF-8"):
        clusterspec.load(path)


# -- JSON specs ----------------------------------------------------------------------


def test_json_spec_in_the_proto_mapping(tmp_path: Path) -> None:
    data = {
        "name": "mpi",
        "affinity": "AFFINITY_HARD_ANTI",
        "onFailure": "FAILURE_POLICY_TEARDOWN",
        "waitForCapacityS": 30,
        "members": [
            {"role": "head", "image": "a", "memoryMib": "256", "userData": "aGk="},
            {"role": "worker", "image": "b", "count": 4, "requirements": {"gpu": "1"}},
        ],
    }
    req = clusterspec.load(_write(tmp_path, json.dumps(data), "c.json"))
    assert (req.name, req.affinity, req.on_failure, req.wait_for_capacity_s) == (
        "mpi",
        clusters_pb2.AFFINITY_HARD_ANTI,
        clusters_pb2.FAILURE_POLICY_TEARDOWN,
        30,
    )
    assert req.members[0].memory_mib == 256 and req.members[0].user_data == b"hi"
    assert req.members[1].count == 4 and dict(req.members[1].requirements) == {"gpu": "1"}
    # proto field names, short enum names, and a round trip through MessageToJson
    short = {
        "name": "x",
        "affinity": "soft-anti",
        "on_failure": "TEARDOWN",
        "members": [{"role": "a", "image": "i", "user_data": base64.b64encode(b"x").decode()}],
    }
    got = clusterspec.load(_write(tmp_path, json.dumps(short), "s.json"))
    assert got.affinity == clusters_pb2.AFFINITY_SOFT_ANTI and got.members[0].user_data == b"x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "x",\n "members": [}', "c.json:2: not valid JSON"),
        ("[]", "c.json: must hold a JSON object"),
        ('{"name": "x", "members": [{"role": "a", "image": "i"}], "colour": 1}', "colour"),
        ('{"name": "x", "affinity": "diagonal", "members": []}', "c.json: affinity: "),
        ('{"name": "x", "members": []}', "c.json: members: the cluster needs at least one"),
        ('{"name": "x", "members": [{"role": "a"}]}', "c.json: members[0].image: "),
        (
            '{"name": "x", "members": [{"role": "a", "image": "i"}, {"role": "a", "image": "j"}]}',
            "c.json: members[1].role: role 'a' is already used by members[0]",
        ),
        ('{"name": "x", "members": [{"role": "a", "image": "i", "count": "many"}]}', "count"),
    ],
)
def test_bad_json_specs(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(clusterspec.SpecError) as exc:
        clusterspec.load(_write(tmp_path, text, "c.json"))
    assert expected in exc.value.message and str(tmp_path / "c.json") in exc.value.message
    assert "\n" not in exc.value.message  # one line (protobuf's lists every field after)


# -- --member, --require, enum names -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("head=img", ("head", "img", 1, 0, 0)),
        ("worker=img,count=16", ("worker", "img", 16, 0, 0)),
        ("worker=img,count=16,cpus=2,memory-mib=1024", ("worker", "img", 16, 2, 1024)),
        ("worker=img,cpus=2", ("worker", "img", 1, 2, 0)),
        ("worker=img,memory_mib=512", ("worker", "img", 1, 0, 512)),
        ("worker=debian:12,count=4", ("worker", "debian:12", 4, 0, 0)),  # image with ':'
        ("w=reg:5000/deb:12,cpus=1,memory-mib=64", ("w", "reg:5000/deb:12", 1, 1, 64)),
    ],
)
def test_member_flag(text: str, want: tuple[str, str, int, int, int]) -> None:
    m = clusterspec.member_arg(text)
    assert (m.role, m.image, m.count, m.cpus, m.memory_mib) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("head", "must be ROLE=IMAGE"),
        ("head:img", "must be ROLE=IMAGE"),
        ("=img", "no ROLE"),
        ("head=", "no IMAGE"),
        ("head=,count=3", "no IMAGE"),
        ("w=img,count=two", "count must be a whole number"),
        ("w=img,count=0", "count must be a whole number"),
        ("w=img,cpus=-2", "cpus must be"),
        ("w=img,memory-mib=lots", "memory-mib must be"),
        ("w=img,disks=3", "unknown field"),
        ("w=img,blank=scratch", "blank= in 'w=img,blank=scratch': expected NAME:SIZE"),
        ("w=img,blank=s:1GiB:btrfs", "expected NAME:SIZE"),
    ],
)
def test_bad_member_flag(text: str, match: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        clusterspec.member_arg(text)


def test_require_flag() -> None:
    assert clusterspec.requirement_arg("gpu=1") == ("gpu", "1")
    assert clusterspec.requirement_arg(" hypervisor = xen ") == ("hypervisor", "xen")
    assert clusterspec.requirement_arg("k=a=b") == ("k", "a=b")
    for bad in ("gpu", "=1", "gpu=", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            clusterspec.requirement_arg(bad)
    pairs = [("gpu", "1"), ("hypervisor", "xen"), ("gpu", "1")]
    assert clusterspec.requirements(pairs) == {"gpu": "1", "hypervisor": "xen"}
    assert clusterspec.requirements(None) == {}
    with pytest.raises(ValueError, match="--require gpu is given twice"):
        clusterspec.requirements([("gpu", "1"), ("gpu", "2")])


def test_enum_names() -> None:
    for text in ("soft-anti", "SOFT_ANTI", "AFFINITY_SOFT_ANTI", "soft_anti"):
        assert affinity_value(text) == clusters_pb2.AFFINITY_SOFT_ANTI
    assert affinity_value("hard") == clusters_pb2.AFFINITY_HARD
    assert affinity_value(2) == 2
    assert failure_policy_value("teardown") == clusters_pb2.FAILURE_POLICY_TEARDOWN
    assert failure_policy_value("KEEP") == clusters_pb2.FAILURE_POLICY_KEEP
    with pytest.raises(ValueError, match="not one of none, soft-anti"):
        affinity_value("anti")
    with pytest.raises(ValueError, match="not one of keep, teardown"):
        failure_policy_value("unspecified")


def test_toml_spec_carries_connectivity_allow_and_limits() -> None:
    req = clusterspec.parse_toml(
        'name = "grp"\nconnectivity = "cluster"\nallow = ["tcp/22", "icmp"]\n'
        "limits = { cpu_percent = 25, net_mbps = 50 }\n"
        '[[members]]\nrole = "w"\nimage = "img"\n'
    )
    assert req.connectivity == "cluster"
    assert list(req.allow) == ["tcp/22", "icmp"]
    assert (req.limits.cpu_percent, req.limits.net_mbps, req.limits.disk_mbps) == (25, 50, 0)
    with pytest.raises(clusterspec.SpecError, match="limits: speed: unknown"):
        clusterspec.parse_toml(
            'name = "g"\nlimits = { speed = 1 }\n[[members]]\nrole = "w"\nimage = "i"\n'
        )
