#!/usr/bin/env bash
# Installs the tools that check the deployment files without a Docker engine:
#   docker-compose (Debian's v1) for `docker-compose config -q` on compose.yaml and the override,
#   promtool (Debian's `prometheus` package) for `promtool check config|rules` and `promtool test rules`.
# Idempotent: does nothing when both are on PATH; runs `apt-get update` only when the package lists
# do not know a package yet. Needs root (or sudo) and Debian's package archive.
set -euo pipefail

packages=()
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)

if [ "${#packages[@]}" -eq 0 ]; then
  echo "install-deploy-tools: docker-compose and promtool are already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deploy-tools: need root (or sudo) to install ${packages[*]}" >&2
  exit 1
fi

# A package is installable when apt knows a candidate version for it; otherwise refresh the lists once.
has_candidate() {
  local candidate
  candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}
for package in "${packages[@]}"; do
  if ! has_candidate "$package"; then
    echo "install-deploy-tools: apt does not know $package yet: apt-get update"
    "${as_root[@]}" apt-get update -qq
    break
  fi
done

# Only promtool is wanted from the prometheus package, not a running Prometheus server: when no
# policy is in place, deny service starts for the duration of the install (the usual container
# policy-rc.d), and remove that policy afterwards.
policy=/usr/sbin/policy-rc.d
created_policy=false
cleanup() {
  if [ "$created_policy" = true ]; then "${as_root[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 0755 "$policy"
  created_policy=true
fi

echo "install-deploy-tools: installing ${packages[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

docker-compose version --short
promtool --version 2>&1 | head -n 1
