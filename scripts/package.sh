#!/usr/bin/env bash
# Builds the .deb and .rpm packages of spillway-agent and spillway-ingester
# into target/packages/ (docs/install.md says what they install).
#
#   scripts/package.sh                  release builds, then the four packages
#   PACKAGE_PROFILE=dev PACKAGE_NO_BUILD=1 scripts/package.sh
#                                       package the debug binaries already built
#                                       (the test suite's way: no release build)
#   PACKAGE_REVISION=2 scripts/package.sh   another package revision (0.1.0-2)
#   PACKAGE_ONLY=spillway-agent PACKAGE_FORMATS=deb scripts/package.sh
#
# Needs cargo-deb and cargo-generate-rpm (`scripts/package.sh install`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Pinned: the suite's package test knows these tools' output.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

install_tools() {
  command -v cargo-deb >/dev/null && cargo deb --version | grep -q "$CARGO_DEB_VERSION" \
    || cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
  command -v cargo-generate-rpm >/dev/null \
    && cargo generate-rpm --version | grep -q "$CARGO_GENERATE_RPM_VERSION" \
    || cargo install --locked cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION"
}

if [ "${1:-}" = install ]; then
  install_tools
  exit 0
fi
for tool in cargo-deb cargo-generate-rpm; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing: scripts/package.sh install" >&2; exit 1; }
done

profile="${PACKAGE_PROFILE:-release}"
revision="${PACKAGE_REVISION:-1}"
out="${PACKAGE_OUT:-target/packages}"
mkdir -p "$out"

if [ -z "${PACKAGE_NO_BUILD:-}" ]; then
  # Built one at a time: built alone, the agent leaves out libcurl (only the
  # ingester's OIDC needs it; Cargo.toml says why).
  cargo build --locked --profile "$profile" -p spillway-agent
  cargo build --locked --profile "$profile" -p spillway-ingester
fi

# PACKAGE_FAST=1: light compression (the suite's packages of debug binaries).
deb_fast=() rpm_compress=zstd
if [ -n "${PACKAGE_FAST:-}" ]; then deb_fast=(--fast); rpm_compress=gzip; fi
for pkg in ${PACKAGE_ONLY:-spillway-agent spillway-ingester}; do
  if [[ " ${PACKAGE_FORMATS:-deb rpm} " == *" deb "* ]]; then
    # cargo-deb warns that a dev profile is for tests only: that is its use here.
    cargo deb --no-build --profile "$profile" -p "$pkg" --deb-revision "$revision" \
      "${deb_fast[@]}" -o "$out/" 2>&1 \
      | grep -v -e 'dev profile is not supported' -e 'To enable debug symbols' || true
  fi
  if [[ " ${PACKAGE_FORMATS:-deb rpm} " == *" rpm "* ]]; then
    # -p takes the crate's directory.
    cargo generate-rpm --profile "$profile" -p "${pkg#spillway-}" -o "$out/" \
      --payload-compress "$rpm_compress" \
      --metadata-overwrite <(printf 'release = "%s"\n' "$revision")
  fi
done
ls -l "$out"
