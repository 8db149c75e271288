#!/usr/bin/env bash
# Install the system tools edgenode and its tests use, where missing (Debian/Ubuntu, as root).
set -euo pipefail
need=()
command -v git >/dev/null 2>&1 || need+=(git)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
command -v fakeroot >/dev/null 2>&1 || need+=(fakeroot)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
# Sandboxes run their supervisor with the system python3; their tests use curl and ps inside.
[ -x /usr/bin/python3 ] || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The README's tour reads JSON answers with jq.
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v ps >/dev/null 2>&1 || need+=(procps)
# The agents page is tested in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "edgenode: missing system tools (${need[*]}); install them with your package manager" >&2
  exit 0
fi
echo "edgenode: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
