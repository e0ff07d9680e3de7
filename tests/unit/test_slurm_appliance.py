"""The Slurm variant of the cloud appliance (images/cloud_slurm.py), without building it."""

from __future__ import annotations

from pathlib import Path

from images import cloud, cloud_slurm


def test_the_variant_adds_slurm_to_the_plain_package_list() -> None:
    assert cloud_slurm.PACKAGES[: len(cloud.PACKAGES)] == cloud.PACKAGES
    assert {"slurmd", "slurm-client", "munge"} <= set(cloud_slurm.PACKAGES)


def test_its_own_cache_and_digest() -> None:
    assert cloud_slurm.default_out_dir({}) != cloud.default_out_dir({})
    assert cloud_slurm.default_out_dir({cloud_slurm.CACHE_ENV: "/x"}) == Path("/x")
    plain = cloud.inputs_digest(Path(cloud.__file__).read_bytes())
    assert cloud_slurm.inputs_digest() != plain


def test_slurmd_and_munge_are_off_and_the_image_has_no_munge_key(tmp_path: Path) -> None:
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    for unit in ("slurmd.service", "munge.service", "ssh.service"):
        (wants / unit).symlink_to(f"/lib/systemd/system/{unit}")
    key = tmp_path / "etc/munge/munge.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"shared by every VM")
    cloud_slurm.configure_slurm(tmp_path)
    assert sorted(p.name for p in wants.iterdir()) == ["ssh.service"]
    assert not key.exists()
    dropin = (tmp_path / cloud_slurm.SLURMD_DROPIN_PATH).read_text()
    assert "ConditionPathExists=\n" in dropin
