#!/usr/bin/env bash
# Build peft.cpp against LibTorch 2.6 (Debian 13 "trixie"'s libtorch-dev) and run the whole ctest suite,
# in a chroot beside this Debian 12 system (whose libtorch-dev is 1.13.1, the one build/ uses).
#
# usage (as root): scripts/check-libtorch2.sh [CTEST ARGS...]     e.g. scripts/check-libtorch2.sh -L compile
#                  scripts/check-libtorch2.sh --exec CMD [ARGS...]  build, then run CMD in the chroot's build
#                                                                    folder instead of ctest (tests/test_quant ...)
#
# What it does, each step skipped when already done (run it again to rebuild and retest incrementally):
#   1. debootstrap --variant=minbase trixie into $PEFT_TRIXIE_CHROOT (default /var/cache/peft-trixie), from the
#      mirror this host uses (default http://deb.debian.org/debian); installs the debootstrap package if missing
#   2. mounts /proc, /sys, /dev, /dev/pts, /dev/shm in the chroot (unmounted again on exit, however the
#      script ends) and copies /etc/resolv.conf (apt, and npm fetching the JavaScript reference tokenizers)
#   3. apt-get installs there the project's dependencies (trixie's names for scripts/install-deps.sh's list:
#      libtorch-dev 2.6, clang-19 and its libFuzzer, ...); redone only when the list below changes
#   4. copies the source tree (rsync, without build/ and .git/, through a read-only bind mount) to /src/peft
#      inside the chroot: the chroot builds a snapshot, so edits made meanwhile in this checkout do not land
#      in the middle of a build, and tests never write into this checkout (nor into its build/)
#   5. configures (once) and builds /build/peft inside the chroot with Ninja, then runs ctest there
# Environment: PEFT_TRIXIE_CHROOT (chroot folder), PEFT_TRIXIE_MIRROR (Debian mirror), PEFT_CHECK_JOBS
# (build and ctest parallelism, default 2), PEFT_CHECK_NICE (niceness, default 15).
# The exit status is ctest's (0: every test passed), or non-zero when a step before it fails. Runs on one
# chroot take turns ($PEFT_TRIXIE_CHROOT.lock). First run: ~5 min for the chroot and packages, ~30 min to
# build (2 cores), ~22 min for ctest -j2; later runs rebuild only what changed (ccache kept in the chroot).
# (the whole script is one block, read before it runs: editing this file meanwhile cannot derail a run)
{
set -euo pipefail

root=${PEFT_TRIXIE_CHROOT:-/var/cache/peft-trixie}
jobs=${PEFT_CHECK_JOBS:-2}
niceness=${PEFT_CHECK_NICE:-15}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "check-libtorch2.sh: needs root (debootstrap, chroot, mount)" >&2
  exit 2
fi
mirror=${PEFT_TRIXIE_MIRROR:-}
if [ -z "$mirror" ]; then
  # the host's own Debian mirror (deb822 .sources or a one-line sources.list), else deb.debian.org
  mirror=$(grep -hsE '^\s*URIs:\s*\S+/debian/?\s*$' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}')
  [ -n "$mirror" ] || mirror=$(grep -hsE '^\s*deb\s+(\[[^]]*\]\s+)?\S+/debian/?\s' /etc/apt/sources.list \
                                 /etc/apt/sources.list.d/*.list | sed -E 's/^\s*deb\s+(\[[^]]*\]\s+)?//' |
                               awk '{print $1; exit}')
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

# one run at a time per chroot (the mounts and the build folder are shared)
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
if ! flock -n 9; then
  echo "check-libtorch2.sh: another run holds $root.lock; waiting" >&2
  flock 9
fi

# Mount points that this run made, unmounted in reverse order on exit (however it exits)
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null ||
      echo "check-libtorch2.sh: could not unmount ${mounted[i]}" >&2
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mount_in() {  # mount_in TARGET MOUNT-ARGS...: mount unless something already is there
  local target=$root$1
  shift
  mkdir -p "$target"
  if mountpoint -q "$target"; then return 0; fi
  mount "$@" "$target"
  mounted+=("$target")
}
in_chroot() {  # a clean environment: nothing of this host's shell leaks into the 2.6 build
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive "$@"
}

# ---- 1. the chroot ----
if [ ! -f "$root/.peft-debootstrap-done" ]; then
  if [ -e "$root" ]; then
    # a debootstrap that was interrupted: start over, but never delete through a mount
    if findmnt -rn -o TARGET | grep -q "^$root\(/\|$\)"; then
      echo "check-libtorch2.sh: $root is incomplete and has mounts under it; unmount them first" >&2
      exit 2
    fi
    say "removing the incomplete chroot $root"
    rm -rf --one-file-system "$root"
  fi
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap on this host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  fi
  say "debootstrap --variant=minbase trixie $root $mirror (a few minutes)"
  debootstrap --variant=minbase trixie "$root" "$mirror"
  touch "$root/.peft-debootstrap-done"
fi

# ---- 2. mounts, name resolution ----
mount_in /proc -t proc proc
mount_in /sys -t sysfs sysfs
mount_in /dev --bind /dev
mount_in /dev/pts --bind /dev/pts
mount_in /dev/shm -t tmpfs -o mode=1777,nosuid,nodev shm
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

# ---- 3. the dependencies (scripts/install-deps.sh's list, with trixie's names) ----
pkgs=(build-essential cmake ninja-build ccache pkg-config ca-certificates rsync procps
      libtorch-dev libopenblas0-pthread nlohmann-json3-dev libcli11-dev libpcre2-dev libxxhash-dev
      libcpp-httplib-dev libgloo-dev gnuplot-nox python3 fortunes-min fortunes curl
      libgtest-dev libbenchmark-dev nodejs npm
      clang-19 libclang-rt-19-dev libfuzzer-19-dev)  # the fuzz test: clang and libFuzzer (Debian 12: clang-14)
stamp=$(printf '%s\n' "${pkgs[@]}" | sort | md5sum | cut -d' ' -f1)
if [ "$(cat "$root/.peft-packages" 2>/dev/null)" != "$stamp" ]; then
  say "installing the dependencies in the chroot (apt-get)"
  in_chroot apt-get update -qq
  in_chroot apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  echo "$stamp" > "$root/.peft-packages"
fi
torch_version=$(in_chroot dpkg-query -W -f='${Version}' libtorch-dev)
echo "LibTorch in the chroot: libtorch-dev $torch_version"

# ---- 4. the source snapshot ----
# (through a read-only bind mount, with the chroot's rsync: this host need not have one)
say "copying $src to $root/src/peft"
mkdir -p "$root/src/peft" "$root/build/peft"
mount_in /mnt/peft-checkout --bind -o ro "$src"
mount -o remount,bind,ro "$root/mnt/peft-checkout"
# by content, and without this checkout's modification times: a file changed here gets a new time there, so the
# build sees it even when it was edited before the chroot's last compile of it (a copy's old time would not)
in_chroot rsync -rlp --checksum --delete --exclude=/build/ --exclude=/.git/ /mnt/peft-checkout/ /src/peft/

# ---- 5. configure, build, test ----
if [ ! -f "$root/build/peft/CMakeCache.txt" ]; then
  say "configuring /build/peft"
  in_chroot cmake -S /src/peft -B /build/peft -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
say "building /build/peft (nice -n $niceness, -j$jobs)"
start=$SECONDS
in_chroot nice -n "$niceness" cmake --build /build/peft -j "$jobs" -- -k 0  # -k 0: every compile error at once
echo "build: $((SECONDS - start)) s"
if [ "${1:-}" = --exec ]; then  # --exec CMD...: run CMD in /build/peft inside the chroot instead of ctest
  shift
  say "in /build/peft: $*"
  status=0
  in_chroot sh -c 'cd /build/peft && exec "$@"' sh "$@" || status=$?
  exit $status
fi
say "ctest in /build/peft (nice -n $niceness, -j$jobs) $*"
start=$SECONDS
status=0
in_chroot sh -c 'n=$1 j=$2; shift 2; cd /build/peft && exec nice -n "$n" ctest -j "$j" --output-on-failure "$@"' \
  sh "$niceness" "$jobs" "$@" || status=$?
echo "ctest: $((SECONDS - start)) s, exit $status (LibTorch $torch_version, build folder $root/build/peft)"
exit $status
}
