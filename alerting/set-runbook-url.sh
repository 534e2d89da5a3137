#!/usr/bin/env bash
# Point every alert's runbook_url at your copy of docs/runbooks.md (a wiki
# page, your fork, an internal docs site), in the rules and in their unit
# tests, which pin the annotations:
#
#   alerting/set-runbook-url.sh https://wiki.example.org/ops/vitals/runbooks.md
#
# Each URL stays <base>#<alert section>. The current base is read from the
# rules, so the script can be run again with another base.
set -euo pipefail
if [ $# -ne 1 ] || [[ ! "$1" =~ ^https?://[^[:space:]\"#]+$ ]]; then
  echo "usage: $0 https://host/path/runbooks.md  (absolute, no '#', no quotes)" >&2
  exit 2
fi
new="$1"
dir="$(cd "$(dirname "$0")/prometheus" && pwd)"
old="$(grep -ho 'runbook_url: "[^"#]*#' "$dir"/rules/*.yml | sort -u)"
if [ "$(printf '%s\n' "$old" | wc -l)" -ne 1 ]; then
  echo "$0: the rules use more than one runbook base:" >&2
  printf '%s\n' "$old" >&2
  exit 1
fi
old="${old#runbook_url: \"}"
old="${old%#}"
# Literal replacement (no regex) of "<old>#" by "<new>#".
for f in "$dir"/rules/*.yml "$dir"/tests/*.yml; do
  OLD="\"$old#" NEW="\"$new#" perl -pi -e 's/\Q$ENV{OLD}\E/$ENV{NEW}/g' "$f"
done
echo "runbook_url base: $old -> $new" >&2
