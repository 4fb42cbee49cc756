#!/usr/bin/env bash
# An arm64 (aarch64) Debian root in which aarch64 onnxruntime runs under qemu user emulation.
#
#   bash bench/arm_root.sh                 # build it once, or reuse it
#   bash bench/arm_root.sh run CMD [ARG]   # then run CMD inside it (its venv first on PATH)
#
# Needs root (debootstrap and chroot do). It is idempotent: a complete root carries marker files
# and is reused as it is; a half-built one (a killed debootstrap) is built again from scratch.
#
# Environment:
#   GHOSTIFY_ARM_ROOT         where the root lives (default /var/tmp/ghostify-arm64)
#   GHOSTIFY_ARM_SUITE        Debian suite (default bookworm: its python3 is the 3.11 the wheels target)
#   GHOSTIFY_ARM_MIRROR       Debian mirror (default: the one this host's apt uses for that suite)
#   GHOSTIFY_ARM_HOST_PYTHON  host python whose onnxruntime/numpy/typer/rich versions the root gets
#                             (default python3), so x86 and aarch64 run the same releases
#   GHOSTIFY_ARM_PINS         explicit requirements instead, e.g. "onnxruntime==1.32.0 numpy==2.4.6 ..."
#
# Inside the root: /opt/ghostify-venv (the venv), /opt/ghostify-wheels (the aarch64 wheels).
set -euo pipefail

ROOT=${GHOSTIFY_ARM_ROOT:-/var/tmp/ghostify-arm64}
SUITE=${GHOSTIFY_ARM_SUITE:-bookworm}
HOST_PY=${GHOSTIFY_ARM_HOST_PYTHON:-python3}
VENV=/opt/ghostify-venv
WHEELS=/opt/ghostify-wheels
BASE_MARK=.ghostify-base    # written when debootstrap has finished
READY_MARK=.ghostify-ready  # written when the venv holds exactly the pinned wheels
PACKAGES=(onnxruntime numpy typer rich)

say() { printf '[arm_root] %s\n' "$*" >&2; }
die() { printf '[arm_root] FAILED: %s\n' "$*" >&2; exit 1; }

# A clean environment: the host's PIP_* variables and paths mean nothing inside the root.
in_root() {
    env -i PATH="$VENV/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root LC_ALL=C.UTF-8 \
        chroot "$ROOT" "$@"
}

check_root_dir() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
    case $ROOT in
        /*) ;;
        *) die "GHOSTIFY_ARM_ROOT must be an absolute path, not '$ROOT'" ;;
    esac
    [ "$(realpath -m "$ROOT")" != / ] || die "GHOSTIFY_ARM_ROOT must not be /"
}

ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]} with apt-get"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# The kernel must hand aarch64 ELF files to qemu: binfmt_misc mounted, the qemu-aarch64 entry on.
# In a container binfmt_misc may be absent or read-only; nothing here can fix that.
ensure_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc
    if [ ! -e "$dir/status" ]; then
        say "mounting binfmt_misc on $dir"
        mount binfmt_misc -t binfmt_misc "$dir" 2>/dev/null ||
            die "binfmt_misc not available (cannot mount $dir; in a container, run it privileged)"
    fi
    if [ "$(head -n1 "$dir/qemu-aarch64" 2>/dev/null)" != enabled ]; then
        say "enabling the qemu-aarch64 binfmt entry"
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
            die "update-binfmts --enable qemu-aarch64 failed (is qemu-user-static installed?)"
    fi
    [ "$(head -n1 "$dir/qemu-aarch64" 2>/dev/null)" = enabled ] || die "qemu-aarch64 binfmt entry not enabled"
    # Without the F (fix-binary) flag the kernel would look for qemu inside the chroot, where
    # debootstrap's second stage finds none. Debian's qemu-user-static registers with F.
    grep -q '^flags:.*F' "$dir/qemu-aarch64" ||
        die "the qemu-aarch64 binfmt entry lacks the F flag (register it with Debian's qemu-user-static)"
}

# The first mirror this host's apt uses for $SUITE (deb822 .sources, then one-line .list files).
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$SUITE" 'BEGIN { RS = "" } {
            u = ""; ok = 0; n = split($0, L, "\n")
            for (i = 1; i <= n; i++) {
                if (L[i] ~ /^URIs:/) { split(L[i], w, " "); u = w[2] }
                if (L[i] ~ /^Suites:/) { m = split(L[i], w, " "); for (j = 2; j <= m; j++) if (w[j] == s) ok = 1 }
            }
            if (ok && u != "") print u }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -E 's/\[[^]]*\]//' "$f" | awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2 }'
    done
    return 0
}

build_base() {
    if [ -f "$ROOT/$BASE_MARK" ]; then
        say "reusing the arm64 base root at $ROOT"
        return
    fi
    [ -d "$ROOT" ] && rmdir "$ROOT" 2>/dev/null  # an empty directory made beforehand is fine
    [ ! -e "$ROOT" ] || die "$ROOT exists but is no finished ghostify arm64 root (no $BASE_MARK): remove it or set GHOSTIFY_ARM_ROOT"
    local partial="$ROOT.partial" log="$ROOT.debootstrap.log" mirror t0=$SECONDS
    mirror=${GHOSTIFY_ARM_MIRROR:-$(host_mirror | head -n1)}
    mirror=${mirror:-http://deb.debian.org/debian}
    if [ -e "$partial" ]; then
        # Left by a run killed half-way. --one-file-system: never descend into a /proc left mounted.
        say "removing the half-built $partial"
        rm -rf --one-file-system "$partial" || die "cannot remove $partial (a mount left inside it?)"
    fi
    say "debootstrap --arch=arm64 --variant=minbase $SUITE from $mirror into $partial (minutes; log: $log)"
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv \
        "$SUITE" "$partial" "$mirror" >"$log" 2>&1; then
        tail -n 5 "$log" >&2
        die "debootstrap failed (full log: $log)"
    fi
    printf 'suite=%s\nmirror=%s\nbuilt=%s\nseconds=%s\n' \
        "$SUITE" "$mirror" "$(date -u +%FT%TZ)" $((SECONDS - t0)) >"$partial/$BASE_MARK"
    mv "$partial" "$ROOT"
    say "base root built in $((SECONDS - t0)) s"
}

# The requirements the root's venv gets: the host python's own releases unless told otherwise.
pins() {
    if [ -n "${GHOSTIFY_ARM_PINS:-}" ]; then
        echo "$GHOSTIFY_ARM_PINS"
        return
    fi
    "$HOST_PY" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))' "${PACKAGES[@]}" 2>/dev/null
}

# Every manylinux tag the root's glibc satisfies (wheels say manylinux2014 = 2_17, 2_27, 2_28 ...):
# pip only matches the --platform tags it is given, it does not expand manylinux_2_28 downwards.
platform_args() {
    local glibc minor
    glibc=$(in_root /usr/bin/getconf GNU_LIBC_VERSION | awk '{print $2}') || die "getconf failed inside the root"
    for ((minor = ${glibc#2.}; minor >= 17; minor--)); do
        printf -- '--platform\nmanylinux_2_%s_aarch64\n' "$minor"
    done
    printf -- '--platform\nmanylinux2014_aarch64\n'
}

install_wheels() {
    local spec=$1 pyver versions platforms
    if [ -f "$ROOT/$READY_MARK" ] && [ "$(sed -n 's/^pins=//p' "$ROOT/$READY_MARK")" = "$spec" ]; then
        say "reusing $VENV in the root ($spec)"
        return
    fi
    pyver=$(in_root /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "the root's python3 does not run under emulation"
    mapfile -t platforms < <(platform_args)
    say "downloading aarch64 cp${pyver/./} wheels on the host: $spec"
    rm -rf "${ROOT:?}$WHEELS" "${ROOT:?}/$READY_MARK"
    mkdir -p "$ROOT$WHEELS"
    # shellcheck disable=SC2086  # $spec is a list of requirements; -qq: the host pip config may warn per index
    "$HOST_PY" -m pip download -qq --disable-pip-version-check --dest "$ROOT$WHEELS" --only-binary=:all: \
        --python-version "$pyver" --implementation cp "${platforms[@]}" $spec ||
        die "pip download of the aarch64 wheels failed"
    say "wheels: $(cd "$ROOT$WHEELS" && echo *.whl)"
    say "installing them into $VENV inside the root (under emulation)"
    in_root /usr/bin/python3 -m venv --clear "$VENV" || die "python3 -m venv failed inside the root"
    # shellcheck disable=SC2086
    in_root "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$WHEELS" $spec || die "pip install inside the root failed"
    versions=$(in_root "$VENV/bin/python" -c 'import platform, onnxruntime, numpy, typer, rich
from importlib.metadata import version
print(f"machine={platform.machine()}")
for p in ("onnxruntime", "numpy", "typer", "rich"): print(f"{p}={version(p)}")') ||
        die "import onnxruntime, numpy, typer, rich failed inside the root"
    printf 'pins=%s\n%s\ninstalled=%s\n' "$spec" "$versions" "$(date -u +%FT%TZ)" >"$ROOT/$READY_MARK"
    say "venv ready: $(echo "$versions" | tr '\n' ' ')"
}

main() {
    case ${1:-} in
        "" | run) ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; return ;;
        *) die "usage: bash $0 [run CMD [ARG...]]" ;;
    esac
    check_root_dir
    ensure_tools
    ensure_binfmt
    local spec
    if ! spec=$(pins); then
        # Without a host python to copy versions from, a finished venv is still good for `run`.
        [ -f "$ROOT/$READY_MARK" ] ||
            die "$HOST_PY lacks one of ${PACKAGES[*]}: set GHOSTIFY_ARM_HOST_PYTHON or GHOSTIFY_ARM_PINS"
        spec=$(sed -n 's/^pins=//p' "$ROOT/$READY_MARK")
        say "$HOST_PY lacks one of ${PACKAGES[*]}: keeping the venv's $spec"
    fi
    build_base
    install_wheels "$spec"
    say "ready: $ROOT"
    if [ "${1:-}" = run ]; then
        shift
        [ $# -gt 0 ] || die "run needs a command"
        in_root "$@"
    fi
}

main "$@"
