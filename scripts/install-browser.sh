#!/usr/bin/env bash
# Installs Debian's chromium for the chat page's browser tests (test/chat/, driven by playwright-core
# with executablePath /usr/bin/chromium; playwright's own browser downloads are not used).
# Idempotent: does nothing when /usr/bin/chromium is there; runs `apt-get update` only when the package
# lists do not know chromium yet. Needs root (or sudo) and Debian's package archive.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "install-browser: $CHROMIUM is already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-browser: need root (or sudo) to install chromium" >&2
  exit 1
fi

candidate="$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/ { print $2 }')"
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
  echo "install-browser: apt does not know chromium yet: apt-get update"
  "${as_root[@]}" apt-get update -qq
fi

echo "install-browser: installing chromium"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x "$CHROMIUM" ] || { echo "install-browser: the chromium package did not install $CHROMIUM" >&2; exit 1; }
"$CHROMIUM" --version 2>/dev/null || true
