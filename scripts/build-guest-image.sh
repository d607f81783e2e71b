#!/usr/bin/env bash
# Build the ucloud guest: a small bootable raw disk image, from Debian packages only.
#
#   FAT filesystem on the whole disk (no partition table), syslinux boot sector
#   -> Debian kernel (apt-get download, unpacked, never installed); the "cloud" flavour
#      by default: LZ4-compressed, so it unpacks in a fraction of the time the generic
#      (XZ) kernel needs under TCG, and it probes fewer drivers
#   -> busybox-static initramfs (guest/init: boot markers on the serial console,
#      virtio modules, NICs up, acpid for the ACPI power button, a serial shell).
#
# No root, no loop devices: mkfs.vfat on a file, syslinux --install, mcopy.
# Output: build/guest/ucloud-guest.img (path printed on stdout). The image is rebuilt
# only when it is absent or older than this script or a file in guest/; --force
# rebuilds anyway. The kernel .deb is cached in build/guest/ too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST_SRC="$ROOT/guest"
OUT_DIR="${UCLOUD_GUEST_BUILD_DIR:-$ROOT/build/guest}"
IMAGE="$OUT_DIR/ucloud-guest.img"
DISK_MIB=32
FLAVOUR="${UCLOUD_GUEST_KERNEL_FLAVOUR:-cloud-amd64}"  # or amd64 (the generic kernel)
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-guest-image: $*" >&2; }

up_to_date() {
  [ -s "$IMAGE" ] || return 1
  [ "$(cat "$IMAGE.flavour" 2>/dev/null)" = "$FLAVOUR" ] || return 1
  local src
  for src in "${BASH_SOURCE[0]}" "$GUEST_SRC"/*; do
    [ "$src" -nt "$IMAGE" ] && return 1
  done
  return 0
}

if [ "$FORCE" -eq 0 ] && up_to_date; then
  echo "$IMAGE"
  exit 0
fi

for tool in busybox mkfs.vfat syslinux mcopy dpkg-deb apt-get apt-cache; do
  command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
BUSYBOX="$(command -v busybox)"
"$BUSYBOX" true || { log "$BUSYBOX does not run"; exit 1; }
SYSLINUX_BIOS=/usr/lib/syslinux/modules/bios

mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "$OUT_DIR/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- the kernel: resolve linux-image-<flavour> to its versioned package, download it ---
kernel_package() {
  apt-cache depends "linux-image-$FLAVOUR" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
PKG="$(kernel_package || true)"
if [ -z "$PKG" ]; then
  log "apt cannot resolve linux-image-$FLAVOUR; running apt-get update"
  apt-get update -qq
  PKG="$(kernel_package)"
fi
[ -n "$PKG" ] || { log "cannot find a Debian kernel package"; exit 1; }
KVER="${PKG#linux-image-}"
DEB="$(ls "$OUT_DIR"/"${PKG}"_*.deb 2>/dev/null | head -1 || true)"
if [ -z "$DEB" ]; then
  log "downloading $PKG"
  if ! (cd "$WORK" && apt-get download -q "$PKG" >/dev/null 2>&1); then
    log "apt-get download failed; running apt-get update and trying again"
    apt-get update -qq
    (cd "$WORK" && apt-get download -q "$PKG" >/dev/null)
  fi
  mv "$WORK"/"${PKG}"_*.deb "$OUT_DIR"/
  DEB="$(ls "$OUT_DIR"/"${PKG}"_*.deb | head -1)"
fi

# --- unpack only the kernel and the modules the guest loads ---
mapfile -t MODULES < <(grep -v '^\s*#' "$GUEST_SRC/modules" | grep -v '^\s*$')
dpkg-deb --fsys-tarfile "$DEB" > "$WORK/kernel.tar"
mapfile -t MOD_PATHS < <(tar -tf "$WORK/kernel.tar" | grep -E "^\./lib/modules/$KVER/kernel/.*/($(IFS='|'; echo "${MODULES[*]}"))\.ko$")
tar -xf "$WORK/kernel.tar" -C "$WORK" "./boot/vmlinuz-$KVER" "${MOD_PATHS[@]}"
rm "$WORK/kernel.tar"

# --- the initramfs: busybox + init + config + modules, as a newc cpio (busybox cpio) ---
RD="$WORK/initramfs"
mkdir -p "$RD"/{bin,dev,etc/acpi/PWRF,lib/modules,proc,sys,tmp,run,root,var/log}
cp "$BUSYBOX" "$RD/bin/busybox"
ln -s busybox "$RD/bin/sh"
ln -s busybox "$RD/bin/init"
install -m 0755 "$GUEST_SRC/init" "$RD/init"
install -m 0644 "$GUEST_SRC/inittab" "$RD/etc/inittab"
install -m 0644 "$GUEST_SRC/modules" "$RD/etc/modules"
install -m 0755 "$GUEST_SRC/acpi-power" "$RD/etc/acpi/PWRF/00000080"
install -m 0755 "$GUEST_SRC/udhcpc.script" "$RD/etc/udhcpc.script"
install -m 0755 "$GUEST_SRC/nic-hotplug" "$RD/bin/nic-hotplug"
for mod in "${MOD_PATHS[@]}"; do
  cp "$WORK/$mod" "$RD/lib/modules/"
done
for mod in "${MODULES[@]}"; do
  [ -f "$RD/lib/modules/$mod.ko" ] || { log "module $mod not found in $PKG"; exit 1; }
done
# /dev/console comes from the kernel's built-in initramfs (no mknod, so no root needed).
(cd "$RD" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 -n > "$WORK/initrd.img"

# --- the disk: FAT on the whole image, syslinux boot sector, files copied in with mtools ---
RAW="$WORK/disk.img"
truncate -s "${DISK_MIB}M" "$RAW"
mkfs.vfat -n UCLOUD -F 16 "$RAW" >/dev/null
syslinux --install "$RAW"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$RAW" "$WORK/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$RAW" "$WORK/initrd.img" ::/initrd.img
mcopy -i "$RAW" "$GUEST_SRC/syslinux.cfg" ::/syslinux.cfg
echo "$PKG" > "$WORK/version.txt"
mcopy -i "$RAW" "$WORK/version.txt" ::/version.txt
mv "$RAW" "$IMAGE"
echo "$FLAVOUR" > "$IMAGE.flavour"
log "built $IMAGE (kernel $KVER, initramfs $(stat -c %s "$WORK/initrd.img") bytes)"
echo "$IMAGE"
