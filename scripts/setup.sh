#!/usr/bin/env bash
# Installs what meshbuild needs from the machine: Nix (Debian's nix-bin) when nix-store is
# missing, iproute2 for the test hosts, and chromium for the status page's browser test.
# Idempotent; needs root only when something is missing.
set -euo pipefail
missing=()
command -v nix-store >/dev/null 2>&1 || missing+=(nix-bin)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A fresh nix-bin leaves /nix/store absent until first use; make it exist so store paths resolve.
if [[ $(id -u) -eq 0 && ! -d /nix/store ]]; then
  mkdir -p /nix/store /nix/var/nix
fi
