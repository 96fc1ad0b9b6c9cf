#!/usr/bin/env bash
# Prepares this machine for cilia: Debian packages, kernel header links for bcc, bpffs.
# Idempotent: every step checks first and does only what is missing.
set -euo pipefail

APT_PACKAGES=(python3-bpfcc linux-headers-amd64 iproute2 iptables curl ethtool)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/build; this kernel ships no headers of its own,
# so point it at the installed Debian headers (the newest of them).
kver=$(uname -r)
hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
common=${hdr%-amd64}-common
if [ -z "$hdr" ] || [ ! -d "$common" ]; then
  echo "setup: no Debian kernel headers found under /usr/src" >&2
  exit 1
fi
mkdir -p "/lib/modules/$kver"
for pair in "build:$hdr" "source:$common"; do
  link="/lib/modules/$kver/${pair%%:*}"
  target="${pair#*:}"
  if [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" "$link"
  fi
done

if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
