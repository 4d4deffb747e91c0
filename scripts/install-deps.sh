#!/usr/bin/env bash
# Installs the Debian packages LatentDiffusion builds against (oneDNN, libpng, libjpeg-turbo, zlib), if missing.
set -euo pipefail
pkgs="libdnnl-dev libpng-dev libturbojpeg0-dev zlib1g-dev pkg-config"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
