#!/bin/sh
# Installs Debian 12 packages. Run as root.
#   install-deps.sh [all]   what the node side and every test need (`make test`, .ci/run)
#   install-deps.sh demo    what `make demo` needs: the node side (QEMU, libvirt, dnsmasq,
#                           nftables) and the image builds; none of the servers only the
#                           tests use (PostgreSQL, Prometheus, Slurm), which apt would
#                           enable and start on a systemd host.
set -eu
# gcc and python3-dev: pip builds libvirt-python (the `libvirt` extra) from source, as
# it has no wheel.
DEMO="python3-venv gcc python3-dev qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu \
libvirt-clients libvirt-dev pkg-config dnsmasq-base busybox-static linux-image-amd64 \
iproute2 cpio gzip kmod e2fsprogs mmdebstrap openssh-client nftables util-linux"
TESTS="cloud-init postgresql prometheus iputils-ping iperf3 slurmctld slurm-client"
case "${1:-all}" in
  all) PKGS="$DEMO $TESTS" ;;
  demo) PKGS="$DEMO" ;;
  *) echo "usage: $0 [all|demo]" >&2; exit 2 ;;
esac
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
