"""The pure parts of agent.net.dhcp: hosts file, lease scrubbing, dnsmasq command line."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from agent.net import dhcp
from agent.net.dhcp import (
    DhcpHost,
    DhcpServer,
    parse_bindings,
    readable_by,
    render_hosts,
    scrub_leases,
)
from workspace import errors
from workspace.hostproc import cmdline_has, pid_if_ours

NET = ipaddress.IPv4Network("10.213.0.0/24")


def test_render_hosts_sorted_normalised() -> None:
    text = render_hosts(
        [
            ("52:54:00:00:00:0A", "10.213.0.10", "vm-ten"),
            DhcpHost("52:54:00:00:00:09", "10.213.0.9", "nine"),
            ("52:54:00:00:00:64", "10.213.0.100", ""),
        ],
        NET,
        router="10.213.0.1",
    )
    assert text == (
        "52:54:00:00:00:09,10.213.0.9,nine\n"
        "52:54:00:00:00:0a,10.213.0.10,vm-ten\n"
        "52:54:00:00:00:64,10.213.0.100\n"
    )
    assert render_hosts([]) == ""


def test_render_hosts_order_independent() -> None:
    a = [("52:54:00:00:00:01", "10.213.0.2", "a"), ("52:54:00:00:00:02", "10.213.0.3", "b")]
    assert render_hosts(a, NET) == render_hosts(list(reversed(a)), NET)


@pytest.mark.parametrize(
    "entries",
    [
        [("52:54:00:00:00", "10.213.0.2", "x")],  # short MAC
        [("53:54:00:00:00:01", "10.213.0.2", "x")],  # multicast MAC
        [("52:54:00:00:00:01", "10.213.1.2", "x")],  # outside the subnet
        [("52:54:00:00:00:01", "10.213.0.0", "x")],  # network address
        [("52:54:00:00:00:01", "10.213.0.255", "x")],  # broadcast address
        [("52:54:00:00:00:01", "10.213.0.1", "x")],  # the router
        [("52:54:00:00:00:01", "fe80::1", "x")],  # not IPv4
        [("52:54:00:00:00:01", "10.213.0.2", "bad_name")],
        [("52:54:00:00:00:01", "10.213.0.2", "-x")],
        [("52:54:00:00:00:01", "10.213.0.2", "a,b")],  # would break the file format
        [("52:54:00:00:00:01", "10.213.0.2", "a"), ("52:54:00:00:00:01", "10.213.0.3", "b")],
        [("52:54:00:00:00:01", "10.213.0.2", "a"), ("52:54:00:00:00:02", "10.213.0.2", "b")],
    ],
)
def test_render_hosts_rejects(entries: list[tuple[str, str, str]]) -> None:
    with pytest.raises(errors.InvalidArgument):
        render_hosts(entries, NET, router="10.213.0.1")


def test_bindings_and_lease_scrubbing() -> None:
    hosts = "52:54:00:00:00:01,10.213.0.2,a\n52:54:00:00:00:02,10.213.0.3\n"
    bindings = parse_bindings(hosts)
    assert bindings == {("52:54:00:00:00:01", "10.213.0.2"), ("52:54:00:00:00:02", "10.213.0.3")}
    assert parse_bindings(None) == set()
    leases = (
        "1795498988 52:54:00:00:00:01 10.213.0.2 a 01:52:54:00:00:00:01\n"
        "1795498988 52:54:00:00:00:09 10.213.0.3 old 01:52:54:00:00:00:09\n"  # IP moved
        "1795498988 52:54:00:00:00:02 10.213.0.4 * *\n"  # MAC moved
        "garbage\n"
    )
    assert scrub_leases(leases, bindings) == (
        "1795498988 52:54:00:00:00:01 10.213.0.2 a 01:52:54:00:00:00:01\n"
    )


def test_command_line(tmp_path: Path) -> None:
    server = DhcpServer(
        "wsbr0",
        tmp_path / "dhcp",
        "10.213.0.0/24",
        router="10.213.0.1",
        dns_servers=["10.213.0.53", "10.213.0.54"],
        lease_time_s=7200,
        dnsmasq="/usr/sbin/dnsmasq",
    )
    state = tmp_path / "dhcp"
    assert server.command() == [
        "/usr/sbin/dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-hosts",
        "--no-resolv",
        "--interface=wsbr0",
        "--bind-interfaces",
        "--except-interface=lo",
        "--dhcp-range=10.213.0.0,static,255.255.255.0,7200",
        "--dhcp-authoritative",
        "--dhcp-ignore-clid",
        f"--dhcp-hostsfile={state}/hosts",
        f"--dhcp-leasefile={state}/leases",
        f"--pid-file={state}/dnsmasq.pid",
        "--dhcp-option=option:router,10.213.0.1",
        "--dhcp-option=option:dns-server,10.213.0.53,10.213.0.54",
        "--user=nobody",
        "--log-facility=-",
    ]
    assert not state.exists()  # constructing touches nothing


def test_command_line_without_router_or_dns(tmp_path: Path) -> None:
    cmd = DhcpServer("br1", tmp_path, "192.0.2.0/28", log_dhcp=True).command(user="root")
    assert "--dhcp-range=192.0.2.0,static,255.255.255.240,3600" in cmd
    assert "--dhcp-option=3" in cmd  # an empty router option: dnsmasq offers no router
    assert not [arg for arg in cmd if "dns-server" in arg]
    assert cmd[-3:] == ["--user=root", "--log-facility=-", "--log-dhcp"]


@pytest.mark.parametrize(
    ("subnet", "kwargs"),
    [
        ("fd00::/64", {}),
        ("10.213.0.0/33", {}),
        ("10.213.0.0/24", {"router": "10.213.1.1"}),
        ("10.213.0.0/24", {"lease_time_s": 60}),
    ],
)
def test_bad_server_config(tmp_path: Path, subnet: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidArgument):
        DhcpServer("br0", tmp_path, subnet, **kwargs)  # type: ignore[arg-type]


def test_readable_by(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hosts = private / "hosts"
    hosts.write_text("")
    hosts.chmod(0o644)
    assert readable_by(hosts, "root")
    if os.stat(private).st_uid != 65534:
        assert not readable_by(hosts, "nobody")
    open_dir = Path("/")
    assert readable_by(open_dir / "etc" / "hostname", "nobody") == bool(
        os.stat("/etc/hostname").st_mode & 0o004
    )


def test_a_pid_running_something_else_is_not_ours() -> None:
    matches = cmdline_has("dnsmasq", "--pid-file=/nonexistent/dnsmasq.pid")
    assert pid_if_ours(os.getpid(), matches) is None
    assert pid_if_ours(None, matches) is None
    assert cmdline_has("dnsmasq", "--pid-file=/x")(["/usr/sbin/dnsmasq", "-k", "--pid-file=/x"])
    assert not cmdline_has("dnsmasq", "--pid-file=/x")(["dnsmasq", "--pid-file=/y"])
    assert not cmdline_has("dnsmasq")(["python", "dnsmasq"])
    assert cmdline_has("libvirtd", "-p", "/s/p")(["/usr/sbin/libvirtd", "-d", "-p", "/s/p"])


def test_the_log_is_private_and_kept_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dnsmasq's log names every VM's MAC and address: 0600 (also one an earlier version
    left 0644); past its size it moves to dnsmasq.log.1 and starts afresh."""
    monkeypatch.setattr(dhcp, "LOG_MAX_BYTES", 1000)
    server = DhcpServer("br9", tmp_path / "dhcp", "192.0.2.0/28", dnsmasq="/bin/false")
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    server.log_path.write_bytes(b"DHCPACK(br9) 192.0.2.5 52:54:00:00:00:05 vm\n" * 100)
    server.log_path.chmod(0o644)
    with pytest.raises(errors.Unavailable, match="exited at start"):
        server.ensure_running()  # /bin/false: dnsmasq that exits at once
    assert stat.S_IMODE(server.log_path.stat().st_mode) == 0o600
    old = server.log_path.with_name("dnsmasq.log.1")
    assert old.read_bytes().count(b"DHCPACK") == 100
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert server.log_path.read_text().startswith("--- ")  # the new start, alone


def test_a_first_start_has_no_log_to_trim_and_says_nothing_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = DhcpServer("br8", tmp_path / "dhcp", "192.0.2.0/28", dnsmasq="/bin/false")
    with pytest.raises(errors.Unavailable):
        server.ensure_running()
    assert "cannot trim" not in caplog.text
    assert server.log_path.read_text().startswith("--- ")


def test_a_hosts_file_that_cannot_be_written_leaves_the_old_one_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the hosts file is rewritten: the old file stays as it was and
    no temporary is left in the server's directory (one was left per failed write, each
    named after the agent's pid and thread)."""
    server = DhcpServer("wsbr-x", tmp_path / "dhcp", str(NET))
    assert server.set_hosts([("52:54:00:00:00:0a", "10.213.0.10", "ten")])
    before = sorted(p.name for p in (tmp_path / "dhcp").iterdir())
    write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        server.set_hosts([("52:54:00:00:00:0b", "10.213.0.11", "eleven")])
    monkeypatch.setattr(os, "write", write)
    assert sorted(p.name for p in (tmp_path / "dhcp").iterdir()) == before
    assert server.hosts() == "52:54:00:00:00:0a,10.213.0.10,ten\n"


def test_the_previous_log_is_private_also_when_an_earlier_version_left_it_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trimmed log goes to dnsmasq.log.1 (every VM's MAC and address): one an earlier
    version made 0644 under the umask kept that mode when it was written over, for any
    local user to read, though dnsmasq.log itself was made 0600."""
    monkeypatch.setattr(dhcp, "LOG_MAX_BYTES", 1000)
    server = DhcpServer("br7", tmp_path / "dhcp", "192.0.2.0/28", dnsmasq="/bin/false")
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    server.log_path.write_bytes(b"DHCPACK(br7) 192.0.2.5 52:54:00:00:00:05 vm\n" * 100)
    old = server.log_path.with_name("dnsmasq.log.1")
    old.write_bytes(b"DHCPACK(br7) 192.0.2.6 52:54:00:00:00:06 older\n")
    old.chmod(0o644)
    with pytest.raises(errors.Unavailable, match="exited at start"):
        server.ensure_running()
    assert old.read_bytes().count(b"DHCPACK") == 100
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_the_lease_file_is_private_before_dnsmasq_opens_it(tmp_path: Path) -> None:
    """The lease file names every VM's MAC, address and hostname: dnsmasq made it 0644
    (its umask 022) for any local user to read. The agent makes it 0600 before dnsmasq
    opens it (dnsmasq rewrites it in place, keeping the mode), also one an earlier
    version left 0644, and a scrubbed one stays 0600."""
    fresh = DhcpServer("br6", tmp_path / "fresh", "192.0.2.0/28", dnsmasq="/bin/false")
    with pytest.raises(errors.Unavailable, match="exited at start"):
        fresh.ensure_running()
    assert stat.S_IMODE(fresh.leases_path.stat().st_mode) == 0o600
    assert fresh.leases_path.read_text() == ""

    old = DhcpServer("br5", tmp_path / "old", "192.0.2.0/28", dnsmasq="/bin/false")
    old.set_hosts([("52:54:00:00:00:05", "192.0.2.5", "vm")])
    kept = "1700000000 52:54:00:00:00:05 192.0.2.5 vm *\n"
    old.leases_path.write_text(kept + "1700000000 52:54:00:00:00:06 192.0.2.6 gone *\n")
    old.leases_path.chmod(0o644)
    with pytest.raises(errors.Unavailable, match="exited at start"):
        old.ensure_running()
    assert stat.S_IMODE(old.leases_path.stat().st_mode) == 0o600
    assert old.leases_path.read_text() == kept
    old.leases_path.chmod(0o644)
    with pytest.raises(errors.Unavailable, match="exited at start"):
        old.ensure_running()  # nothing to scrub: the file is still made private
    assert stat.S_IMODE(old.leases_path.stat().st_mode) == 0o600
