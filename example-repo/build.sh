#!/usr/bin/env bash
# Builds one reproducible JAR per example job: example-repo/build.sh [OUT_DIR]
# (default OUT_DIR: example-repo/artifacts). Needs javac (Java 17) and Flink (scripts/flink-local install).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/artifacts}
FLINK_HOME=${FLINK_HOME:-$("$HERE/../scripts/flink-local" home)} || {
  echo "build.sh: Flink not found; run scripts/flink-local install (or set FLINK_HOME)" >&2; exit 1; }
command -v javac >/dev/null || { echo "build.sh: javac not found; install Java 17 (scripts/flink-local install does)" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# jar name -> main class
declare -A MAIN=(
  [counter-v1]=com.example.flink.ClickCounter
  [counter-v2]=com.example.flink.ClickCounterV2
  [counter-broken]=com.example.flink.ClickCounterBroken
  [counter-rekeyed]=com.example.flink.ClickCounterRekeyed
  [batch-report]=com.example.flink.BatchReport
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for job in "${!MAIN[@]}"; do
  mkdir -p "$work/$job"
  find "$HERE/jobs-src/$job" -name '*.java' -print0 | sort -z | xargs -0 \
    javac --release 17 -nowarn -cp "$FLINK_HOME/lib/*" -d "$work/$job"
  # Fixed timestamps and sorted entries: the same sources give the same bytes, so digests are stable.
  python3 - "$work/$job" "$OUT/$job.jar" "${MAIN[$job]}" <<'PY'
import os, sys, zipfile
classes, target, main = sys.argv[1:]
stamp = (2026, 1, 1, 0, 0, 0)
def add(z, name, data):
    info = zipfile.ZipInfo(name, stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)
files = sorted(os.path.relpath(os.path.join(d, f), classes) for d, _, fs in os.walk(classes) for f in fs)
tmp = target + ".tmp"
with zipfile.ZipFile(tmp, "w") as z:
    add(z, "META-INF/MANIFEST.MF", f"Manifest-Version: 1.0\r\nMain-Class: {main}\r\nCreated-By: flink-gitops example-repo/build.sh\r\n\r\n")
    for name in files:
        with open(os.path.join(classes, name), "rb") as f:
            add(z, name.replace(os.sep, "/"), f.read())
os.replace(tmp, target)
PY
  echo "built $OUT/$job.jar"
done
