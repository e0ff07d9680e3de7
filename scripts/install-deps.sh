#!/bin/sh
# Installs the Debian 12 packages the node side and the tests need. Run as root.
set -eu
PKGS="python3-venv qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu \
libvirt-clients libvirt-dev pkg-config dnsmasq-base busybox-static linux-image-amd64 \
iproute2 cpio gzip kmod e2fsprogs mmdebstrap openssh-client cloud-init \
postgresql prometheus nftables iputils-ping iperf3 slurmctld slurm-client util-linux"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
fi
# libvirtd without systemd needs these (DESIGN.md section 8; it also needs a *group*
# libvirt-qemu, even with user=root in qemu.conf).
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/run/libvirt
