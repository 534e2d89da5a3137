#!/usr/bin/env bash
# Build the vitals Debian package: release binary, man pages and shell
# completions generated from it (vitals man, vitals completions), then
# `cargo deb --no-build` with the [package.metadata.deb] of Cargo.toml.
#
#   cargo install cargo-deb --locked     # once
#   deploy/build-deb.sh                  # -> target/debian/vitals_<version>-1_<arch>.deb
#   dpkg -c target/debian/vitals_*.deb   # lists /usr/bin/vitals, the units...
#
# PROFILE=dev packages the debug build instead (a quick check of the
# packaging; the .deb to ship is the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
profile="${PROFILE:-release}"
cargo build --profile "$profile" --locked --bin vitals
dir="$profile"; [ "$profile" = dev ] && dir=debug
bin="target/$dir/vitals"
rm -rf target/assets
mkdir -p target/assets/completions
"$bin" man --dir target/assets/man
"$bin" completions bash > target/assets/completions/vitals
"$bin" completions zsh > target/assets/completions/_vitals
"$bin" completions fish > target/assets/completions/vitals.fish
cargo deb --no-build --profile "$profile"
