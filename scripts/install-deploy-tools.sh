#!/usr/bin/env bash
# Installs the tools that check the deployment files without a Docker engine or a cluster:
#   docker-compose (Debian's v1) for `docker-compose config -q` on compose.yaml and the override,
#   promtool (Debian's `prometheus` package) for `promtool check config|rules` and `promtool test rules`,
#   unshare and script (util-linux, bsdutils) for the image's read-only and terminal checks,
#   kubectl with kustomize v5 for `kubectl kustomize deploy/kubernetes/...`.
# Debian's archive has no such kubectl (its kubernetes-client is 1.20, whose kustomize v2 cannot
# render the overlays): the `kubectl` package is installed only from an apt source that offers it
# (Kubernetes' own repository, or the Google Cloud SDK's); without one the script says so and fails.
# Idempotent: does nothing when every tool is on PATH; runs `apt-get update` only when the package
# lists do not know a package yet. Needs root (or sudo) and Debian's package archive.
set -euo pipefail

kustomize_major() {
  kubectl version --client -o json 2>/dev/null | sed -nE 's/.*"kustomizeVersion": *"v([0-9]+).*/\1/p'
}
has_kustomize_v5() {
  command -v kubectl >/dev/null 2>&1 && [ "$(kustomize_major)" -ge 5 ] 2>/dev/null
}

packages=()
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v unshare >/dev/null 2>&1 || packages+=(util-linux)
command -v script >/dev/null 2>&1 || packages+=(bsdutils)
has_kustomize_v5 || packages+=(kubectl)

if [ "${#packages[@]}" -eq 0 ]; then
  echo "install-deploy-tools: docker-compose, promtool, unshare, script and kubectl are already installed"
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

if [[ " ${packages[*]} " == *" kubectl "* ]] && ! has_candidate kubectl; then
  echo "install-deploy-tools: no apt source offers kubectl (Debian's archive does not): add Kubernetes' own apt repository, or install kubectl with kustomize v5 otherwise" >&2
  exit 1
fi

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
kubectl version --client 2>&1 | head -n 2
has_kustomize_v5 || { echo "install-deploy-tools: the installed kubectl has no kustomize v5" >&2; exit 1; }
