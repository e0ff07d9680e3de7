"""Slurm hostlist expressions: our parser and its inverse (workspace/slurm/hostlist.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workspace.slurm.hostlist import HostlistError, compress, expand, expand_all
from workspace.slurm.scontrol import Scontrol


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("c1", ["c1"]),
        ("node[1-3,5],gpu01", ["node1", "node2", "node3", "node5", "gpu01"]),
        ("n[01-03]", ["n01", "n02", "n03"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("a-[1-2]-x", ["a-1-x", "a-2-x"]),
        ("c[1-2],c2,c3", ["c1", "c2", "c3"]),
        ("c1 c2\tc3", ["c1", "c2", "c3"]),
        ("c[3]", ["c3"]),
        ("", []),
    ],
)
def test_expand(text: str, hosts: list[str]) -> None:
    assert expand(text) == hosts


@pytest.mark.parametrize(
    "text", ["c[1-", "c1]", "c[a-b]", "c[3-1]", "c[[1]]", "c[1-2,]", "c[]", "c[0-999999]"]
)
def test_bad_expressions_are_refused(text: str) -> None:
    with pytest.raises(HostlistError):
        expand(text)


def test_expand_all_merges_arguments() -> None:
    assert expand_all(["c[1-2]", "c2,d1"]) == ["c1", "c2", "d1"]


@pytest.mark.parametrize(
    ("hosts", "text"),
    [
        (["c1", "c2", "c3", "c5", "gpu01"], "c[1-3,5],gpu01"),
        (["c1"], "c1"),
        (["n01", "n02", "n10"], "n[01-02],n10"),
        (["head", "c2", "c1"], "head,c[1-2]"),
    ],
)
def test_compress_round_trips(hosts: list[str], text: str) -> None:
    assert compress(hosts) == text
    assert sorted(expand(text)) == sorted(hosts)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol is not installed")
@pytest.mark.parametrize("text", ["node[1-3,5],gpu01", "n[01-03]", "n[8-11]", "c[1-2],d7"])
def test_expand_agrees_with_scontrol(text: str, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=c1\n")
    proc = subprocess.run(
        ["scontrol", "show", "hostnames", text],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )
    assert expand(text) == proc.stdout.split()


def test_a_bad_hostlist_is_refused_whatever_scontrol_makes_of_it(tmp_path: Path) -> None:
    """Debian's 22.05 scontrol reads ``c[1-3`` (a typo by hand) as the node ``c]``,
    exit 0: ``ws-slurm suspend 'c[1-3'`` said "node c] has no workspace; nothing to do",
    exit 0, where the same typo without scontrol is a usage error (exit 2)."""
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'c]'\n")  # what Debian's scontrol prints for c[1-3
    fake.chmod(0o755)
    with pytest.raises(HostlistError, match="without"):
        Scontrol(str(fake)).hostnames(["c[1-3"])
