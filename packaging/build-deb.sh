#!/usr/bin/env bash
# Build dist/edgenode_<version>_<arch>.deb: the single-file node, the systemd unit,
# a default config, and a dedicated `edgenode` system user created on install.
#   usage: packaging/build-deb.sh [PYZ] [OUTDIR]    (PYZ defaults to dist/edgenode.pyz)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYZ=${1:-dist/edgenode.pyz}
OUTDIR=${2:-dist}
[ -f "$PYZ" ] || bash packaging/build-zipapp.sh "$PYZ"
VERSION=$("$PY" -c 'import edgenode; print(edgenode.__version__)')
# The architecture and the binary interface come from the single file itself: the machine its
# ELF files are for, the one CPython minor its extensions are built for, and the newest glibc
# any of its manylinux wheels needs (packaging/abi.py, standard library only).
ARCH=$(python3 packaging/abi.py "$PYZ" --arch)
ABI_DEPENDS=$(python3 packaging/abi.py "$PYZ" --depends)
# The changelog's newest entry must be this version.
head -1 packaging/changelog | grep -q "^edgenode ($VERSION) " \
  || { echo "packaging/changelog does not start with version $VERSION" >&2; exit 1; }
ROOT=$(mktemp -d)
chmod 0755 "$ROOT"
trap 'rm -rf "$ROOT"' EXIT

install -D -m 0755 "$PYZ" "$ROOT/usr/lib/edgenode/edgenode.pyz"
install -d "$ROOT/usr/bin"
cat > "$ROOT/usr/bin/edgenode" <<'SH'
#!/bin/sh
# edgenode's single-file build; native parts are unpacked once under SHIV_ROOT.
exec /usr/bin/python3 /usr/lib/edgenode/edgenode.pyz "$@"
SH
chmod 0755 "$ROOT/usr/bin/edgenode"
install -D -m 0644 systemd/edgenode.service "$ROOT/lib/systemd/system/edgenode.service"
install -D -m 0644 systemd/edgenode-hub.service "$ROOT/lib/systemd/system/edgenode-hub.service"
install -D -m 0644 packaging/edgenode.toml "$ROOT/etc/edgenode/edgenode.toml"
install -D -m 0644 README.md "$ROOT/usr/share/doc/edgenode/README.md"
install -D -m 0644 packaging/copyright "$ROOT/usr/share/doc/edgenode/copyright"
gzip -9n < packaging/changelog > "$ROOT/usr/share/doc/edgenode/changelog.Debian.gz"
chmod 0644 "$ROOT/usr/share/doc/edgenode/changelog.Debian.gz"

install -d "$ROOT/DEBIAN"
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: edgenode
Version: $VERSION
Architecture: $ARCH
Maintainer: edgenode developers <edgenode@localhost>
Depends: $ABI_DEPENDS, adduser, git, bubblewrap
Section: net
Priority: optional
Description: self-hosted agent cloud node for edge machines
 Workers in WebAssembly isolates, bubblewrap sandboxes, Git artifacts,
 durable agents and replicated SQLite state, in one daemon.
CONTROL
echo "/etc/edgenode/edgenode.toml" > "$ROOT/DEBIAN/conffiles"
cat > "$ROOT/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd edgenode >/dev/null; then
        adduser --system --group --home /var/lib/edgenode --no-create-home --shell /usr/sbin/nologin edgenode
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        systemctl enable edgenode.service >/dev/null || true
        systemctl restart edgenode.service >/dev/null || true
    fi
fi
exit 0
SH
cat > "$ROOT/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop edgenode.service >/dev/null || true
    systemctl disable edgenode.service >/dev/null || true
fi
exit 0
SH
cat > "$ROOT/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/edgenode /var/cache/edgenode
    if getent passwd edgenode >/dev/null; then deluser --system edgenode >/dev/null || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
exit 0
SH
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
mkdir -p "$OUTDIR"
OUT="$OUTDIR/edgenode_${VERSION}_${ARCH}.deb"
# The single file is already compressed: xz would spend minutes to save well under 1%.
fakeroot dpkg-deb --build -Zgzip "$ROOT" "$OUT" >/dev/null
echo "built $OUT"
