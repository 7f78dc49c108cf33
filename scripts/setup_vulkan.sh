#!/usr/bin/env bash
# A Vulkan device for the wgpu backend and its tests: the Vulkan loader plus at least one ICD
# (a GPU vendor's driver, or Mesa's software rasterizer lavapipe, which runs on any CPU).
# Idempotent: does nothing when a loader and an ICD are present; otherwise installs Debian's
# `libvulkan1` and `mesa-vulkan-drivers` with apt. Prints what it found, exits 1 with what to do
# when it cannot install.
set -euo pipefail

icds() {
  local d
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    ls "$d"/*.json 2>/dev/null || true
  done
}
loader() { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 ' ; }

if loader && [ -n "$(icds)" ]; then
  echo "vulkan: loader and ICDs present: $(icds | xargs -n1 basename | tr '\n' ' ')" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: no Vulkan loader/driver found, and apt-get is not available to install one.
 = help: install the Vulkan loader and a driver with your package manager, e.g.
         Fedora: dnf install vulkan-loader mesa-vulkan-drivers
         Arch:   pacman -S vulkan-icd-loader vulkan-swrast
         or run the tests without the wgpu backend: `cargo test --locked`
MSG
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "error: installing libvulkan1 and mesa-vulkan-drivers needs root (apt-get); run this script as root or with passwordless sudo, or run \`cargo test --locked\` without the wgpu backend" >&2
    exit 1
  fi
fi
echo "vulkan: installing libvulkan1 and mesa-vulkan-drivers (lavapipe) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers >&2; then
  $sudo apt-get update >&2
  $sudo apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers >&2
fi
if ! loader || [ -z "$(icds)" ]; then
  echo "error: apt-get installed libvulkan1 and mesa-vulkan-drivers, but no Vulkan loader or ICD is visible (ldconfig -p; /usr/share/vulkan/icd.d)" >&2
  exit 1
fi
echo "vulkan: ready: $(icds | xargs -n1 basename | tr '\n' ' ')" >&2
