#!/usr/bin/env bash
# Regenerates link/hot-functions.txt, the functions build.rs has the linker
# place first: those a release build runs in the benchmark's cases, each
# run under callgrind. The no-op re-run's functions come first (the run
# cron repeats most), then the 1%-changed push, the full push, the pull,
# and the big files. Needs valgrind and what bench/run.sh needs.
#   bench/symbol-order.sh            # then rebuild: cargo build --release
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
BIN=${FTPSYNC_BIN:-$REPO/target/release/ftpsync}
if [ -z "${FTPSYNC_BIN:-}" ]; then (cd "$REPO" && cargo build --release); fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cat >"$OUT/ftpsync" <<WRAP
#!/bin/sh
n=\$(ls "$OUT" | grep -c '^cg\.' || true)
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$OUT/cg.\$((n + 1))" "$BIN" "\$@"
WRAP
chmod +x "$OUT/ftpsync"
# Cases a, b, c, d, e run in that order: callgrind outputs 1 to 5.
BENCH_TOOLS=ftpsync BENCH_FILES=${BENCH_FILES:-2000} BENCH_DIRS=${BENCH_DIRS:-20} \
    BENCH_BIG_FILES=2 BENCH_BIG_MIB=8 FTPSYNC_BIN="$OUT/ftpsync" \
    bash "$REPO/bench/run.sh" >&2
for n in 1 2 3 4 5; do [ -s "$OUT/cg.$n" ] || { echo "no callgrind output for run $n" >&2; exit 1; }; done
python3 "$REPO/bench/hot-functions.py" "$(basename "$BIN")" \
    "$OUT/cg.2" "$OUT/cg.3" "$OUT/cg.1" "$OUT/cg.5" "$OUT/cg.4" >"$REPO/link/hot-functions.txt"
echo "link/hot-functions.txt: $(wc -l <"$REPO/link/hot-functions.txt") functions" >&2
