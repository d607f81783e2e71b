#!/usr/bin/env bash
# Install the Debian packages ucloud needs (etcd, QEMU, Ceph, guest-image tools, networking).
# Idempotent: installs only what is missing; runs apt-get update at most once. Needs root.
set -euo pipefail

PACKAGES=(
  # build and Python tooling
  make python3 python3-venv python3-pip ca-certificates
  # the store
  etcd-server etcd-client
  # VMs
  qemu-system-x86 qemu-utils qemu-block-extra
  # Ceph (single-node test cluster, RBD disks, Python bindings)
  ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd
  # guest image: busybox initramfs, syslinux on a FAT disk
  busybox-static syslinux syslinux-common mtools dosfstools
  # networking
  iproute2
  # validating docker-compose.yml (no container engine runs here)
  docker-compose
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}) and not root: run as root or install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts etcd as a service on install; ucloud runs its own etcd processes.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd || true; systemctl disable etcd >/dev/null 2>&1 || true; fi
echo "install-deps: done"
