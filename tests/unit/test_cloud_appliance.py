"""The cloud appliance builder (images/cloud.py) without running mmdebstrap: the command
line, the package list, the host's apt sources, the cache decision, the tree's
configuration and the push manifest."""

from __future__ import annotations

import json
import os
import threading
import time
import tomllib
from pathlib import Path

import pytest

from images import appliance, cloud, manifest

CLOUD_SCHEMA = Path(
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)


# --- packages and the mmdebstrap command ----------------------------------------------


def test_packages_are_what_the_issue_needs_and_nothing_twice() -> None:
    needed = {
        "systemd-sysv",
        "udev",
        "cloud-init",
        "openssh-server",
        "qemu-guest-agent",
        "ifupdown",
        "resolvconf",  # a network's DNS servers (ifupdown's dns-nameservers lines)
        "isc-dhcp-client",
        "linux-image-cloud-amd64",
        "e2fsprogs",
        "netbase",
        "iproute2",
        "locales",
        "sudo",
        "dbus",
        "iputils-ping",
        "iperf3",
    }
    assert set(cloud.PACKAGES) == needed
    assert len(cloud.PACKAGES) == len(set(cloud.PACKAGES))
    assert cloud.RELEASE == "bookworm"


def test_mmdebstrap_command_uses_the_host_sources_and_names_no_mirror(tmp_path: Path) -> None:
    sources = [Path("/etc/apt/sources.list.d/debian.sources")]
    overlay = tmp_path / "overlay"
    args = cloud.mmdebstrap_command(
        tmp_path / "tree", sources, overlay, ['Acquire::Check-Valid-Until "false";']
    )
    assert args[0] == "mmdebstrap"
    assert {"--mode=root", "--variant=apt", "--format=directory"} <= set(args)
    assert f"--include={','.join(cloud.PACKAGES)}" in args
    assert '--aptopt=Acquire::Check-Valid-Until "false";' in args
    assert f"--setup-hook=sync-in {overlay} /" in args
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in args
    # positional: SUITE TARGET MIRROR... where every mirror is one of the host's files
    assert args[-3:] == ["bookworm", str(tmp_path / "tree"), str(sources[0])]
    assert not any("://" in a for a in args)


def test_mkfs_and_convert_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud.shutil, "which", lambda name, path=None: f"/usr/sbin/{name}")
    mkfs = cloud.mkfs_command(tmp_path / "tree", tmp_path / "root.raw")
    assert mkfs[0] == "/usr/sbin/mkfs.ext4"
    assert mkfs[mkfs.index("-d") + 1] == str(tmp_path / "tree")
    assert mkfs[-1] == str(tmp_path / "root.raw")
    assert "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0" in mkfs
    conv = cloud.convert_command(tmp_path / "root.raw", tmp_path / "root.qcow2")
    assert conv[1:] == [
        "convert", "-q", "-c", "-f", "raw", "-O", "qcow2",
        str(tmp_path / "root.raw"), str(tmp_path / "root.qcow2"),
    ]  # fmt: skip


def test_host_sources_keeps_the_files_naming_the_release(tmp_path: Path) -> None:
    etc_apt = tmp_path / "apt"
    (etc_apt / "sources.list.d").mkdir(parents=True)
    (etc_apt / "sources.list").write_text("# deb http://old bookworm main\n")
    (etc_apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    (etc_apt / "sources.list.d/security.list").write_text(
        "deb http://mirror.example/debian-security bookworm-security main\n"
    )
    (etc_apt / "sources.list.d/other.list").write_text("deb http://x.example/ trixie main\n")
    (etc_apt / "sources.list.d/vendor.list.disabled").write_text("deb http://v/ bookworm main\n")
    found = cloud.host_sources("bookworm", etc_apt)
    assert [p.name for p in found] == ["debian.sources", "security.list"]
    assert cloud.host_sources("bullseye", etc_apt) == []


def test_apt_options_from_apt_config_dump() -> None:
    dump = (
        'APT "";\n'
        'Acquire::Check-Valid-Until "false";\n'
        'Acquire::http::Proxy "http://proxy.example:3128";\n'
        'Acquire::Retries "3";\n'
    )
    assert cloud.apt_options(dump) == [
        'Acquire::Check-Valid-Until "false";',
        'Acquire::http::Proxy "http://proxy.example:3128";',
    ]


# --- the tree ------------------------------------------------------------------------


def _fake_tree(root: Path) -> None:
    for d in ("etc/ssh", "etc/apt/apt.conf.d", "etc/cloud/cloud.cfg.d", "var/lib/dbus"):
        (root / d).mkdir(parents=True)
    for key in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (root / "etc/ssh" / key).write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    (root / "etc/apt/apt.conf.d/99mmdebstrap").write_text('Acquire::http::Proxy "x";\n')
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.255.255.53\n")
    wants = root / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "apt-daily.timer").symlink_to("/lib/systemd/system/apt-daily.timer")


def test_configure_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _fake_tree(root)
    cloud.configure_tree(root)
    etc = root / "etc"
    assert list(etc.glob("ssh/ssh_host_*")) == []
    assert (etc / "ssh/sshd_config").exists()
    assert "PasswordAuthentication no" in (etc / "ssh/sshd_config.d/90-workspace.conf").read_text()
    assert (etc / "machine-id").read_text() == ""
    assert "\nLANG=C.UTF-8\n" in (etc / "default/locale").read_text()
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert (etc / "resolv.conf").read_text() == ""
    assert not (etc / "apt/apt.conf.d/99mmdebstrap").exists()
    assert "/dev/vda / ext4" in (etc / "fstab").read_text()
    assert not (etc / "systemd/system/timers.target.wants/apt-daily.timer").is_symlink()
    for unit in cloud.UNITS_MASKED:
        assert os.readlink(etc / "systemd/system" / unit) == "/dev/null"
    assert (etc / "cloud/cloud.cfg.d/90_workspace.cfg").read_text() == cloud.CLOUD_CFG
    cloud.configure_tree(root)  # idempotent


def test_cloud_cfg_reads_only_the_nocloud_seed_and_passes_the_schema() -> None:
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(cloud.CLOUD_CFG)
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["system_info"]["default_user"]["name"] == cloud.LOGIN_USER
    # sshd's own drop-in turns password login off (test_configure_tree); set-passwords
    # would restart sshd at every first boot to say it again.
    assert "ssh_pwauth" not in cfg
    modules = cfg["cloud_init_modules"] + cfg["cloud_config_modules"] + cfg["cloud_final_modules"]
    for needed in ("users-groups", "ssh", "write-files", "runcmd", "scripts-user", "set_hostname"):
        assert needed in modules
    for left_out in ("apt-configure", "package-update-upgrade-install", "snap", "ntp"):
        assert left_out not in modules
    if not CLOUD_SCHEMA.exists():
        pytest.skip("cloud-init's schema is not installed")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(cfg, json.loads(CLOUD_SCHEMA.read_text()))


def test_overlay_sets_a_small_initrd(tmp_path: Path) -> None:
    cloud.write_overlay(tmp_path)
    conf = tmp_path / "etc/initramfs-tools/conf.d/90-workspace"
    assert "MODULES=list" in conf.read_text()
    hook = tmp_path / "etc/initramfs-tools/hooks/workspace-virtio"
    assert os.access(hook, os.X_OK) and "force_load" in hook.read_text()


def test_find_kernel(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(cloud.CloudApplianceError, match="no kernel"):
        cloud.find_kernel(tmp_path)
    (boot / "vmlinuz-6.1.0-9-cloud-amd64").write_bytes(b"k")
    with pytest.raises(cloud.CloudApplianceError, match="initrd"):
        cloud.find_kernel(tmp_path)
    (boot / "initrd.img-6.1.0-9-cloud-amd64").write_bytes(b"i")
    kernel, initrd, version = cloud.find_kernel(tmp_path)
    assert (kernel.name, initrd.name, version) == (
        "vmlinuz-6.1.0-9-cloud-amd64",
        "initrd.img-6.1.0-9-cloud-amd64",
        "6.1.0-9-cloud-amd64",
    )


# --- the manifest --------------------------------------------------------------------


def test_manifest_text(tmp_path: Path) -> None:
    data = tomllib.loads(cloud.manifest_text())
    assert data["context"] == "nocloud" and data["login_user"] == "debian"
    assert data["cmdline"].startswith("root=/dev/vda rw console=ttyS0")
    assert data["partitions"] == [
        {"name": "root", "file": "root.qcow2", "mode": "cow", "format": "qcow2"}
    ]
    # Without the service's two keys, today's parser takes it as it is.
    plain = tomllib.loads(cloud.manifest_text(service_keys=False))
    assert "context" not in plain and "login_user" not in plain
    parsed = manifest.parse(plain, tmp_path)
    assert parsed.kernel == tmp_path / "vmlinuz" and parsed.initrd == tmp_path / "initrd.img"
    assert parsed.cmdline == cloud.CMDLINE
    assert [(p.name, p.mode, p.format, p.file) for p in parsed.partitions] == [
        ("root", "cow", "qcow2", tmp_path / "root.qcow2")
    ]
    assert {k: v for k, v in data.items() if k not in ("context", "login_user")} == plain


def test_cmdline_gives_the_serial_console_and_the_root_disk() -> None:
    words = cloud.CMDLINE.split()
    assert words[:3] == ["root=/dev/vda", "rw", "console=ttyS0"]


# --- the cache -----------------------------------------------------------------------


def test_default_out_dir() -> None:
    assert cloud.default_out_dir({}) == Path("/var/tmp/ws-cloud-appliance")
    assert cloud.default_out_dir({cloud.CACHE_ENV: "/srv/x"}) == Path("/srv/x")


def test_inputs_digest_follows_source_packages_and_release() -> None:
    base = cloud.inputs_digest(b"src")
    assert base == cloud.inputs_digest(b"src")
    assert base != cloud.inputs_digest(b"src2")
    assert base != cloud.inputs_digest(b"src", (*cloud.PACKAGES, "vim"))
    assert base != cloud.inputs_digest(b"src", release="trixie")


def _fake_outputs(out: Path, digest: str) -> None:
    for name in (cloud.ROOT_NAME, cloud.KERNEL_NAME, cloud.INITRD_NAME, cloud.MANIFEST_NAME):
        (out / name).write_bytes(b"x")
    record = {"inputs_sha256": digest, "kernel_version": "6.1.0-9-cloud-amd64"}
    (out / cloud.RECORD_NAME).write_text(json.dumps(record))


def test_cached_needs_the_same_digest_and_every_file(tmp_path: Path) -> None:
    assert cloud.cached(tmp_path, "d1") is None  # no record
    _fake_outputs(tmp_path, "d1")
    found = cloud.cached(tmp_path, "d1")
    assert found is not None and found.root == tmp_path / "root.qcow2"
    assert found.kernel_version == "6.1.0-9-cloud-amd64" and found.login_user == "debian"
    assert cloud.cached(tmp_path, "d2") is None  # other inputs
    (tmp_path / cloud.INITRD_NAME).unlink()
    assert cloud.cached(tmp_path, "d1") is None  # a file is missing
    (tmp_path / cloud.RECORD_NAME).write_text("{not json")
    assert cloud.cached(tmp_path, "d1") is None


def _digest() -> str:
    return cloud.inputs_digest(Path(cloud.__file__).read_bytes())


def test_build_reuses_the_cache_and_rebuild_forces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> None:
        raise AssertionError("must not build")

    monkeypatch.setattr(cloud, "_check_host", refuse)
    _fake_outputs(tmp_path, _digest())
    assert cloud.build(tmp_path).manifest == tmp_path / "image.toml"

    calls: list[Path] = []

    def fake_make(out: Path, work: Path, digest: str) -> cloud.CloudAppliance:
        calls.append(work)
        return cloud.outputs(out)

    monkeypatch.setattr(cloud, "_check_host", lambda: None)
    monkeypatch.setattr(cloud, "_make", fake_make)
    (tmp_path / ".build-99999").mkdir()  # left by a killed build
    cloud.build(tmp_path, rebuild=True)
    assert len(calls) == 1 and calls[0].parent == tmp_path
    assert not calls[0].exists() and not (tmp_path / ".build-99999").exists()


def test_parallel_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def slow_make(out: Path, work: Path, digest: str) -> cloud.CloudAppliance:
        calls.append(1)
        time.sleep(0.2)
        _fake_outputs(out, digest)
        return cloud.outputs(out)

    monkeypatch.setattr(cloud, "_check_host", lambda: None)
    monkeypatch.setattr(cloud, "_make", slow_make)
    results: list[cloud.CloudAppliance] = []
    threads = [
        threading.Thread(target=lambda: results.append(cloud.build(tmp_path))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    assert {r.root for r in results} == {tmp_path / "root.qcow2"}


# --- errors --------------------------------------------------------------------------


def test_not_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud.os, "geteuid", lambda: 1000)
    with pytest.raises(cloud.CloudApplianceError, match="needs root"):
        cloud.build(tmp_path)
    assert not (tmp_path / cloud.RECORD_NAME).exists()


def test_missing_mmdebstrap_says_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cloud.shutil, "which", lambda name, path=None: None)
    with pytest.raises(cloud.CloudApplianceError, match="install mmdebstrap"):
        cloud.build(tmp_path)


def test_a_failed_step_shows_the_tail_of_its_output() -> None:
    script = "for i in $(seq 1 100); do echo line$i; done; exit 3"
    with pytest.raises(cloud.CloudApplianceError) as err:
        cloud._run(["sh", "-c", script], "mmdebstrap", 30.0)
    text = str(err.value)
    assert text.startswith("mmdebstrap failed (exit 3):")
    assert "line100" in text and "line71" in text and "line70\n" not in text


def test_a_failed_build_leaves_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, work: Path, digest: str) -> cloud.CloudAppliance:
        (work / "tree").mkdir()
        raise cloud.CloudApplianceError("mmdebstrap failed (exit 1):\nE: boom")

    monkeypatch.setattr(cloud, "_check_host", lambda: None)
    monkeypatch.setattr(cloud, "_make", broken)
    with pytest.raises(cloud.CloudApplianceError, match="boom"):
        cloud.build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# --- the command line ----------------------------------------------------------------


def test_main_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[Path | None, bool]] = []

    def fake_build(out: Path | None, *, rebuild: bool = False) -> cloud.CloudAppliance:
        seen.append((out, rebuild))
        return cloud.outputs(tmp_path, "6.1.0-9-cloud-amd64")

    monkeypatch.setattr(cloud, "build", fake_build)
    assert appliance.main(["--cloud", "--out", str(tmp_path), "--rebuild"]) == 0
    assert appliance.main(["--cloud"]) == 0
    assert seen == [(tmp_path, True), (None, False)]
    printed = json.loads(capsys.readouterr().out.split("}\n")[0] + "}")
    assert printed["manifest"] == str(tmp_path / "image.toml")

    def failing(out: Path | None, *, rebuild: bool = False) -> cloud.CloudAppliance:
        raise cloud.CloudApplianceError("mmdebstrap is not installed (install mmdebstrap)")

    monkeypatch.setattr(cloud, "build", failing)
    assert appliance.main(["--cloud"]) == 1
    assert "install mmdebstrap" in capsys.readouterr().err


def test_main_without_cloud_still_needs_out() -> None:
    with pytest.raises(SystemExit):
        appliance.main([])
    with pytest.raises(SystemExit):
        appliance.main(["--out", "/tmp/x", "--rebuild"])


def test_a_step_that_runs_too_long_is_stopped() -> None:
    started = time.monotonic()
    with pytest.raises(cloud.CloudApplianceError, match=r"timed out after 0\.5 s"):
        cloud._run(["sleep", "30"], "mmdebstrap", 0.5)
    assert time.monotonic() - started < 10.0


# --- never delete through a mount ----------------------------------------------------


def test_mounts_below(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "90 22 0:5 / /var/tmp/c/.build-7/tree/sys rw - sysfs sysfs rw\n"
        "91 22 0:6 /null /var/tmp/c/.build-7/tree/dev/null rw - devtmpfs udev rw\n"
        "92 22 0:7 / /var/tmp/c/.build-77 rw - tmpfs tmpfs rw\n"
        "93 22 0:8 / /var/tmp/c/.build-7/with\\040space rw - tmpfs tmpfs rw\n"
    )
    assert cloud.mounts_below(Path("/var/tmp/c/.build-7"), mountinfo) == [
        "/var/tmp/c/.build-7/tree/sys",
        "/var/tmp/c/.build-7/tree/dev/null",
        "/var/tmp/c/.build-7/with space",
    ]
    assert cloud.mounts_below(Path("/srv"), mountinfo) == []


def test_remove_work_leaves_a_directory_with_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / ".build-1"
    (work / "tree/sys").mkdir(parents=True)
    unmounted: list[list[str]] = []
    monkeypatch.setattr(cloud, "mounts_below", lambda path: [str(work / "tree/sys")])
    monkeypatch.setattr(cloud.subprocess, "run", lambda args, **kw: unmounted.append(args))
    assert cloud.remove_work(work) is False
    assert work.exists() and unmounted == [["umount", "--lazy", str(work / "tree/sys")]]
    monkeypatch.setattr(cloud, "mounts_below", lambda path: [])
    assert cloud.remove_work(work) is True and not work.exists()


def test_a_stale_work_directory_with_mounts_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".build-5").mkdir()
    monkeypatch.setattr(cloud, "_check_host", lambda: None)
    monkeypatch.setattr(cloud, "remove_work", lambda work: False)
    monkeypatch.setattr(cloud, "mounts_below", lambda path: [f"{path}/tree/sys"])
    with pytest.raises(cloud.CloudApplianceError, match="still has mounts"):
        cloud.build(tmp_path)
