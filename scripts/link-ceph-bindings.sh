#!/usr/bin/env bash
# Make Debian's python3-rados / python3-rbd (not on PyPI) importable in the project's virtualenv:
# symlink just those two extension modules into a folder named by a .pth file in site-packages.
set -euo pipefail
venv=${1:-.venv}
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dest="$venv/ceph-bindings"
mkdir -p "$dest"
found=0
for mod in rados rbd; do
  for so in /usr/lib/python3/dist-packages/$mod.cpython-311-*.so; do
    [ -e "$so" ] || continue
    ln -sf "$so" "$dest/$(basename "$so")"
    found=$((found + 1))
  done
done
echo "$(cd "$dest" && pwd)" > "$site/ucloud-ceph-bindings.pth"
echo "link-ceph-bindings: $found module(s) linked into $dest"
