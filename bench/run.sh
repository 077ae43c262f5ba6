#!/usr/bin/env bash
# Benchmark: ftpsync vs lftp mirror -R vs rclone sync, pushing to a local vsftpd.
# See bench/README.md. Usage:
#   bench/run.sh                       # full size
#   bench/run.sh BENCH_FILES=1000      # scaled down (settings as args or env vars)
set -euo pipefail

for arg in "$@"; do
    case "$arg" in
    -h | --help)
        sed -n '2,5p' "$0"
        echo "Settings (env or KEY=VALUE args): BENCH_FILES BENCH_DIRS BENCH_BIG_FILES BENCH_BIG_MIB"
        echo "  BENCH_CONCURRENCY BENCH_TOOLS BENCH_CASES BENCH_WORK BENCH_KEEP BENCH_SERVER_DIR BENCH_RTT_MS"
        echo "  BENCH_COUNT BENCH_PULL_DIR FTPSYNC_BIN BENCH_OUT"
        exit 0
        ;;
    BENCH_*=* | FTPSYNC_BIN=*) export "${arg?}" ;;
    *)
        echo "unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILES=${BENCH_FILES:-10000}       # case a/b/c: number of small files
DIRS=${BENCH_DIRS:-100}           # ... spread over this many directories
BIG_FILES=${BENCH_BIG_FILES:-8}   # case d: number of big files
BIG_MIB=${BENCH_BIG_MIB:-64}      # ... of this many MiB each
CONC=${BENCH_CONCURRENCY:-8}      # connections/transfers per tool
TOOLS=${BENCH_TOOLS:-"ftpsync lftp rclone"}
CASES=${BENCH_CASES:-"a b c d e"}  # e: pull of the small tree (after a, b or c)
FTPSYNC_BIN=${FTPSYNC_BIN:-$REPO/target/release/ftpsync}
OUT=${BENCH_OUT:-}                # optional file to also write the table to
RTT_MS=${BENCH_RTT_MS:-0}         # >0: go through bench/delay_relay.py with this round-trip time
KEEP=${BENCH_KEEP:-0}             # 1: keep the work dir
COUNT=${BENCH_COUNT:-0}           # 1: count commands and round-trip waits (always with BENCH_RTT_MS)
if [ -n "${BENCH_WORK:-}" ]; then
    WORK=$BENCH_WORK # given by the user: never deleted
    KEEP=1
else
    WORK=$(mktemp -d /var/tmp/ftpsync-bench.XXXXXX)
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ------------------------------------------------------------ prerequisites
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found ($2)"; }
need python3 "apt-get install python3"
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
VSFTPD=${FTPSYNC_VSFTPD:-$(command -v vsftpd || echo /usr/sbin/vsftpd)}
[ -x "$VSFTPD" ] || die "vsftpd not found (apt-get install vsftpd)"
for t in $TOOLS; do
    case "$t" in
    lftp) need lftp "apt-get install lftp" ;;
    rclone) need rclone "apt-get install rclone" ;;
    ftpsync)
        if [ ! -x "$FTPSYNC_BIN" ]; then
            log "building ftpsync (cargo build --release)"
            (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
        fi
        [ -x "$FTPSYNC_BIN" ] || die "$FTPSYNC_BIN not found"
        ;;
    *) die "unknown tool $t (known: ftpsync lftp rclone)" ;;
    esac
done

# ------------------------------------------------------------------ vsftpd
# Same model as tests/support/servers.rs: anonymous login with write access,
# chrooted into a root-owned dir whose subdir "data" is writable (as root);
# run_as_launching_user=YES without chroot otherwise.
# The server's files live on tmpfs (/dev/shm) when there is one, so that the
# run measures the tools and the protocol rather than the disk: on this
# project's machines ext4 runs without a journal, and creating files right
# after many deletions costs the server a linear scan per new inode
# (ext4 recently_deleted()), which swamped the differences between tools.
# BENCH_SERVER_DIR picks another place (e.g. a disk).
SERVER_PARENT=${BENCH_SERVER_DIR:-}
if [ -z "$SERVER_PARENT" ]; then
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then SERVER_PARENT=/dev/shm; else SERVER_PARENT=$WORK; fi
fi
SRV=$(mktemp -d "$SERVER_PARENT/ftpsync-bench-srv.XXXXXX")
# Case (e) pulls into the same kind of place, for the same reason: on ext4
# the tools' file creations after the previous run's deletions took 2 to 7 s
# for the same tool and tree. BENCH_PULL_DIR picks another place.
PULLED=$(mktemp -d "${BENCH_PULL_DIR:-$SERVER_PARENT}/ftpsync-bench-pull.XXXXXX")
ANON_ROOT=$SRV/root
DISK=$ANON_ROOT/data # what clients see as $REMOTE_BASE
mkdir -p "$ANON_ROOT" "$DISK" "$SRV/empty"
chmod 755 "$SRV" "$ANON_ROOT" "$DISK" "$SRV/empty"
FTP_USER_NAME=anonymous
export FTP_PASSWORD=bench@example.invalid
if [ "$(id -u)" -eq 0 ]; then
    IS_ROOT=1
    FTP_OWNER=ftp
    id ftp >/dev/null 2>&1 || FTP_OWNER=nobody
    chown "$FTP_OWNER:" "$DISK"
    REMOTE_BASE=/data
else
    IS_ROOT=0
    FTP_OWNER=$(id -un)
    REMOTE_BASE=$DISK
fi

read -r PORT PASV_LO PASV_HI < <(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
n = 200
for _ in range(500):
    start = random.randrange(10000, max(10001, lo - n))
    if all(free(p) for p in range(start, start + n)):
        print(port, start, start + n - 1); break
else:
    raise SystemExit("no free passive port range")
EOF
)

# The settings shared with the interop tests, then no logging at all, so
# that the server does as little as possible.
sed -e "s|@PORT@|$PORT|" -e "s|@PASV_LO@|$PASV_LO|" -e "s|@PASV_HI@|$PASV_HI|" \
    -e "s|@FTP_USER@|$FTP_OWNER|" -e "s|@ANON_ROOT@|$ANON_ROOT|" -e "s|@EMPTY@|$SRV/empty|" \
    "$REPO/tests/data/vsftpd-base.conf" >"$SRV/vsftpd.conf"
echo "xferlog_enable=NO" >>"$SRV/vsftpd.conf"
[ "$IS_ROOT" = 1 ] || echo "run_as_launching_user=YES" >>"$SRV/vsftpd.conf"
chmod 600 "$SRV/vsftpd.conf"

VSFTPD_PID=""
RELAY_PID=""
cleanup() {
    if [ -n "$RELAY_PID" ]; then
        kill "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    if [ -n "$VSFTPD_PID" ]; then
        # sessions call setsid(): kill the listener's children too
        pkill -KILL -P "$VSFTPD_PID" 2>/dev/null || true
        kill -KILL "$VSFTPD_PID" 2>/dev/null || true
        wait "$VSFTPD_PID" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then
        log "work dir kept: $WORK (server files: $SRV, pulled trees: $PULLED)"
    else
        rm -rf "$WORK" "$SRV" "$PULLED"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# vsftpd writes fatal "500 OOPS" errors to fd 0.
TZ=UTC "$VSFTPD" "$SRV/vsftpd.conf" 0<>"$SRV/oops.log" >"$SRV/stderr.log" 2>&1 &
VSFTPD_PID=$!
ready=0
for _ in $(seq 1 100); do
    if python3 - "$PORT" "$FTP_USER_NAME" "$FTP_PASSWORD" "$REMOTE_BASE" 2>/dev/null <<'EOF'; then
import ftplib, sys
f = ftplib.FTP(); f.connect("127.0.0.1", int(sys.argv[1]), timeout=2)
f.login(sys.argv[2], sys.argv[3]); f.cwd(sys.argv[4]); f.nlst(); f.quit()
EOF
        ready=1
        break
    fi
    kill -0 "$VSFTPD_PID" 2>/dev/null || break
    sleep 0.1
done
[ "$ready" = 1 ] || die "vsftpd did not start: $(cat "$SRV/oops.log" "$SRV/stderr.log" 2>/dev/null)"
log "vsftpd pid $VSFTPD_PID on 127.0.0.1:$PORT (passive $PASV_LO-$PASV_HI), remote base $REMOTE_BASE, disk $DISK"

# With BENCH_RTT_MS the tools talk to 127.0.0.2, where a relay delays every
# byte by half the round-trip time each way (control and passive ports).
HOST=127.0.0.1
LFTP_LATENCY=""
COUNTS_FILE=""
if [ "$RTT_MS" != 0 ] || [ "$COUNT" = 1 ]; then
    # The relay counts each tool's commands (BENCH_COUNT=1 alone runs it
    # with no delay, which adds its own overhead to the loopback times).
    COUNTS_FILE=$WORK/counts.jsonl
    HOST=127.0.0.2
    # lftp takes the address in a PASV reply (127.0.0.1) unless told otherwise.
    LFTP_LATENCY="; set ftp:prefer-epsv true; set ftp:ignore-pasv-address true"
    exec 3< <(python3 "$REPO/bench/delay_relay.py" "$HOST" "$PORT" "$PASV_LO" "$PASV_HI" \
        "$(awk -v r="$RTT_MS" 'BEGIN{print r/2}')" "$COUNTS_FILE" 2>"$WORK/relay.log")
    RELAY_PID=$!
    read -r -t 10 line <&3 || die "delay relay did not start: $(cat "$WORK/relay.log")"
    [ "$line" = ready ] || die "delay relay: $line"
    log "delay relay on $HOST, round trip ${RTT_MS} ms"
fi

# ------------------------------------------------------------- local trees
SMALL=$WORK/local/small
BIG=$WORK/local/big
log "generating $FILES files (1-8 KiB) in $DIRS dirs and $BIG_FILES x $BIG_MIB MiB"
python3 - "$SMALL" "$FILES" "$DIRS" "$BIG" "$BIG_FILES" "$BIG_MIB" "$CASES" <<'EOF'
import os, random, sys
small, files, dirs, big, big_files, big_mib, cases = sys.argv[1:8]
files, dirs, big_files, big_mib = int(files), int(dirs), int(big_files), int(big_mib)
rng = random.Random(20240601)
for d in range(dirs):
    os.makedirs(os.path.join(small, f"dir{d:03d}"), exist_ok=True)
for i in range(files):
    path = os.path.join(small, f"dir{i % dirs:03d}", f"file{i:05d}.dat")
    with open(path, "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
    # deterministic mtimes spread over 2024 (files older than the first sync)
    t = 1704067200 + rng.randrange(365 * 86400)
    os.utime(path, (t, t))
if "d" in cases.split():
    os.makedirs(big, exist_ok=True)
    rng = random.Random(64)
    chunk = 1 << 20
    for i in range(big_files):
        with open(os.path.join(big, f"big{i}.bin"), "wb") as f:
            for _ in range(big_mib):
                f.write(rng.randbytes(chunk))
        os.utime(os.path.join(big, f"big{i}.bin"), (1717243200 + i, 1717243200 + i))
EOF

# 1% of the small files, chosen deterministically, get new content of a
# different size (so size-only comparisons see the change too).
mutate_small_tree() {
    python3 - "$SMALL" <<'EOF'
import os, random, sys
root = sys.argv[1]
paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
rng = random.Random(4242)
for p in rng.sample(paths, max(1, len(paths) // 100)):
    old = os.path.getsize(p)
    new = rng.randint(1024, 8192)
    if new == old:
        new = old + 1
    with open(p, "wb") as f:
        f.write(rng.randbytes(new))
print(max(1, len(paths) // 100))
EOF
}

# ------------------------------------------------------------------- tools
# lftp: fail instead of retrying for ages; pipeline commands (sync-mode off);
# set remote mtimes the way vsftpd supports (2-argument MDTM; lftp tries
# SITE UTIME first and gives up when it fails); list dotfiles like the others.
LFTP_SETTINGS="set cmd:fail-exit true; set net:max-retries 2; set net:reconnect-interval-base 1"
LFTP_SETTINGS+="; set net:timeout 30; set ftp:ssl-allow false; set ftp:sync-mode false"
LFTP_SETTINGS+="; set ftp:use-site-utime false; set ftp:use-site-utime2 false; set ftp:use-mdtm-overloaded true"
LFTP_SETTINGS+="; set ftp:list-options -a"
# run_tool TOOL TREE REMOTE_SUBDIR LOGFILE [pull]: runs one sync under
# /usr/bin/time (a push of TREE, or with "pull" a download into TREE), sets
# T_SECS, T_KIB, T_RC.
RCLONE_OBSCURED=""
run_tool() {
    local tool=$1 tree=$2 sub=$3 logf=$4 remote=$REMOTE_BASE/$3 pull=${5:-}
    local tfile=$WORK/time.out
    rm -f "$tfile"
    if [ -n "$COUNTS_FILE" ]; then : >"$COUNTS_FILE"; fi
    # The wall time to the millisecond (/usr/bin/time gives hundredths,
    # too coarse for a no-op of 0.07 s); /usr/bin/time for the peak RSS.
    local t0 t1
    t0=$(date +%s%N)
    set +e
    case "$tool" in
    ftpsync)
        local direction=push state=$WORK/state-$sub.db
        if [ -n "$pull" ]; then direction=pull state=$WORK/state-pull-$sub.db; fi
        cat >"$WORK/job-$sub.yaml" <<EOF
direction: $direction
delete: true
local:
  path: $tree
remote:
  host: $HOST
  port: $PORT
  user: $FTP_USER_NAME
  password_env: FTP_PASSWORD
  root: $remote
concurrency: $CONC
state: $state
EOF
        /usr/bin/time -f '%e %M' -o "$tfile" \
            "$FTPSYNC_BIN" run "$WORK/job-$sub.yaml" >"$logf" 2>&1
        ;;
    lftp)
        # See bench/README.md for why these settings.
        local mirror="mirror -R --delete --no-perms --parallel=$CONC '$tree' '$remote'"
        if [ -n "$pull" ]; then mirror="mirror --delete --no-perms --parallel=$CONC '$remote' '$tree'"; fi
        /usr/bin/time -f '%e %M' -o "$tfile" \
            lftp -u "$FTP_USER_NAME,$FTP_PASSWORD" -p "$PORT" \
            -e "$LFTP_SETTINGS$LFTP_LATENCY; $mirror; quit" \
            "$HOST" </dev/null >"$logf" 2>&1
        ;;
    rclone)
        [ -n "$RCLONE_OBSCURED" ] || RCLONE_OBSCURED=$(rclone obscure "$FTP_PASSWORD")
        : >"$WORK/rclone.conf"
        RCLONE_CONFIG_BENCH_TYPE=ftp \
            RCLONE_CONFIG_BENCH_HOST="$HOST" \
            RCLONE_CONFIG_BENCH_PORT="$PORT" \
            RCLONE_CONFIG_BENCH_USER="$FTP_USER_NAME" \
            RCLONE_CONFIG_BENCH_PASS="$RCLONE_OBSCURED" \
            RCLONE_CONFIG_BENCH_WRITING_MDTM=true \
            RCLONE_CONFIG_BENCH_CONCURRENCY=$((2 * CONC + 1)) \
            /usr/bin/time -f '%e %M' -o "$tfile" \
            rclone --config "$WORK/rclone.conf" sync \
            $(if [ -n "$pull" ]; then echo "bench:$remote $tree"; else echo "$tree bench:$remote"; fi) \
            --transfers "$CONC" --checkers "$CONC" --retries 1 --low-level-retries 2 \
            --stats 0 </dev/null >"$logf" 2>&1
        ;;
    esac
    T_RC=$?
    t1=$(date +%s%N)
    set -e
    T_SECS="?"
    T_KIB=0
    local line secs
    line=$(grep -E '^[0-9.]+ [0-9]+$' "$tfile" 2>/dev/null | tail -1 || true)
    if [ -n "$line" ]; then
        read -r secs T_KIB <<<"$line"
        T_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')
    fi
}

# verify TREE REMOTE_SUBDIR: remote dir on vsftpd's disk equals the tree
verify() {
    diff -r -q "$1" "$DISK/$2" >"$WORK/diff.out" 2>&1
}

declare -A SECS PEAK COUNTS
run_case() { # run_case CASE TREE SUBDIR_SUFFIX
    local c=$1 tree=$2 suffix=$3 tool sub logf
    for tool in $TOOLS; do
        sub="$tool$suffix"
        logf="$WORK/log-$c-$tool.txt"
        if [ "$c" = a ] || [ "$c" = d ]; then
            # fresh, empty remote dir per tool
            rm -rf "${DISK:?}/$sub"
            mkdir -p "$DISK/$sub"
            if [ "$IS_ROOT" = 1 ]; then chown "$FTP_OWNER:" "$DISK/$sub"; fi
            rm -f "$WORK/state-$sub.db"
        fi
        local pull="" dest=$tree
        if [ "$c" = e ]; then
            # Download the pushed small tree into a fresh local directory.
            pull=pull dest=$PULLED/$tool
            rm -rf "$dest" "$WORK/state-pull-$sub.db"
            mkdir -p "$dest"
        fi
        sync
        run_tool "$tool" "$dest" "$sub" "$logf" $pull
        if [ "$T_RC" -ne 0 ]; then
            SECS[$c,$tool]="FAILED (exit $T_RC)"
            log "case $c $tool: exit $T_RC after ${T_SECS}s; last lines of $logf:"
            tail -5 "$logf" >&2 || true
        elif [ -n "$pull" ] && ! diff -r -q "$tree" "$dest" >"$WORK/diff.out" 2>&1; then
            SECS[$c,$tool]="FAILED (tree differs)"
            log "case $c $tool: pulled tree differs after ${T_SECS}s:"
            head -5 "$WORK/diff.out" >&2
        elif [ -z "$pull" ] && ! verify "$tree" "$sub"; then
            SECS[$c,$tool]="FAILED (tree differs)"
            log "case $c $tool: remote tree differs after ${T_SECS}s:"
            head -5 "$WORK/diff.out" >&2
        else
            SECS[$c,$tool]=$T_SECS
            log "case $c $tool: ${T_SECS}s, peak RSS $((T_KIB / 1024)) MiB"
        fi
        PEAK[$c,$tool]=$T_KIB
        if [ -n "$COUNTS_FILE" ]; then
            sleep 0.5 # the relay records a connection when both ends have closed
            COUNTS[$c,$tool]=$(count_summary "$COUNTS_FILE")
        fi
    done
}

# count_summary FILE: "commands turns data_connections top-verbs" of one run.
count_summary() {
    python3 - "$1" <<'EOF'
import json, sys
verbs, turns, data = {}, 0, 0
for line in open(sys.argv[1]):
    d = json.loads(line)
    data += d.get("data", 0)
    turns += d.get("turns", 0)
    for v, n in d.get("verbs", {}).items():
        verbs[v] = verbs.get(v, 0) + n
top = sorted(verbs.items(), key=lambda kv: -kv[1])[:8]
print(sum(verbs.values()), turns, data, ",".join(f"{v}:{n}" for v, n in top))
EOF
}

# limit_d: the server's (and the link's) own limit for case (d): the same
# files sent at once by one curl each, a plain STOR per file (no temporary
# name, rename, time or check), through the same relay. Sets LIMIT_D.
LIMIT_D=""
limit_d() {
    local dest=$DISK/curl-big f t0 t1 pids=()
    rm -rf "${dest:?}"
    mkdir -p "$dest"
    if [ "$IS_ROOT" = 1 ]; then chown "$FTP_OWNER:" "$dest"; fi
    sync
    t0=$(date +%s%N)
    for f in "$BIG"/*; do
        curl -s --ftp-pasv -u "$FTP_USER_NAME:$FTP_PASSWORD" -T "$f" \
            "ftp://$HOST:$PORT$REMOTE_BASE/curl-big/" &
        pids+=($!)
    done
    local ok=1
    for p in "${pids[@]}"; do wait "$p" || ok=0; done
    t1=$(date +%s%N)
    if [ "$ok" = 1 ] && verify "$BIG" curl-big; then
        LIMIT_D=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')
        log "case d, $BIG_FILES parallel curl -T: ${LIMIT_D}s"
    else
        log "case d: the parallel curl uploads failed"
    fi
    rm -rf "${dest:?}"
}

for c in $CASES; do
    case "$c" in
    a) run_case a "$SMALL" -small ;;
    b) run_case b "$SMALL" -small ;;
    c)
        n=$(mutate_small_tree)
        CHANGED=$n
        log "changed $n files"
        run_case c "$SMALL" -small
        ;;
    d)
        run_case d "$BIG" -big
        for tool in $TOOLS; do rm -rf "${DISK:?}/$tool-big"; done
        if command -v curl >/dev/null; then limit_d; fi
        ;;
    e) run_case e "$SMALL" -small ;;
    *) die "unknown case $c" ;;
    esac
done

# ------------------------------------------------------------------- table
case_name() {
    case "$1" in
    a) echo "(a) $FILES files 1-8 KiB in $DIRS dirs, full push" ;;
    b) echo "(b) same, no-op re-run" ;;
    c) echo "(c) 1% changed, re-run" ;;
    d) echo "(d) $BIG_FILES x $BIG_MIB MiB, full push" ;;
    e) echo "(e) pull of the small tree into an empty directory" ;;
    esac
}
cell() { # numeric seconds or the failure text, "n/a" for tools not run
    local v=${SECS[$1,$2]:-n/a}
    echo "$v"
}
isnum() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

{
    echo
    echo "ftpsync benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, vsftpd $(dpkg-query -W -f='${Version}' vsftpd 2>/dev/null || echo '?') on 127.0.0.1, concurrency $CONC${RELAY_PID:+, round trip $RTT_MS ms through bench/delay_relay.py}"
    echo
    echo "| case | ftpsync s | lftp s | rclone s | ftpsync/best-other ratio | ftpsync peak MiB |"
    echo "|---|---|---|---|---|---|"
    for c in $CASES; do
        f=$(cell "$c" ftpsync)
        l=$(cell "$c" lftp)
        r=$(cell "$c" rclone)
        best=""
        for o in "$l" "$r"; do
            if isnum "$o" && { [ -z "$best" ] || awk -v a="$o" -v b="$best" 'BEGIN{exit !(a<b)}'; }; then best=$o; fi
        done
        ratio="—"
        if isnum "$f" && [ -n "$best" ]; then
            ratio=$(awk -v a="$f" -v b="$best" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "—" }')
        fi
        peak="—"
        if isnum "$f" && [ "${PEAK[$c,ftpsync]:-0}" != 0 ]; then
            peak=$(awk -v k="${PEAK[$c,ftpsync]}" 'BEGIN{printf "%.1f", k/1024}')
        fi
        echo "| $(case_name "$c") | $f | $l | $r | $ratio | $peak |"
    done
    echo
    if [ -n "$LIMIT_D" ] && isnum "$(cell d ftpsync)"; then
        echo "(d) the server's and link's own limit, $BIG_FILES parallel \`curl -T\` (one plain STOR each): $LIMIT_D s; ftpsync/limit $(awk -v a="$(cell d ftpsync)" -v b="$LIMIT_D" 'BEGIN{printf "%.2f", a/b}')"
        echo
    fi
    if [ -n "${PEAK[a,lftp]:-}${PEAK[a,rclone]:-}" ]; then
        printf 'peak RSS MiB (lftp / rclone):'
        for c in $CASES; do
            printf ' %s: %s / %s;' "$c" \
                "$(awk -v k="${PEAK[$c,lftp]:-0}" 'BEGIN{printf "%.1f", k/1024}')" \
                "$(awk -v k="${PEAK[$c,rclone]:-0}" 'BEGIN{printf "%.1f", k/1024}')"
        done
        echo
    fi
    if [ -n "$COUNTS_FILE" ]; then
        echo
        echo "Commands the server received and round-trip waits (times the client sent after a reply, on all control connections), per run and per file of the case:"
        echo
        echo "| case | tool | commands | per file | waits | per file | data connections | most sent |"
        echo "|---|---|---|---|---|---|---|---|"
        for c in $CASES; do
            case "$c" in
            a | b | e) per=$FILES ;;
            c) per=${CHANGED:-1} ;;
            d) per=$BIG_FILES ;;
            esac
            for tool in $TOOLS; do
                read -r cmds turns data top <<<"${COUNTS[$c,$tool]:-0 0 0 -}"
                printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$tool" "$cmds" \
                    "$(awk -v a="$cmds" -v b="$per" 'BEGIN{printf "%.2f", a/b}')" "$turns" \
                    "$(awk -v a="$turns" -v b="$per" 'BEGIN{printf "%.2f", a/b}')" "$data" "$top"
            done
        done
    fi
} | tee ${OUT:+"$OUT"}

failed=0
for c in $CASES; do
    for tool in $TOOLS; do
        case "${SECS[$c,$tool]:-}" in FAILED*) failed=1 ;; esac
    done
done
exit "$failed"
