#!/bin/bash
# Build the Cairn appliance ISO from Debian 12 packages and this working tree.
#
#   iso/build.sh [OUT_DIR]        (default: build/iso; run as root on Debian 12)
#
# OUT_DIR receives cairn-<version>.iso, cairn-<version>.iso.sha256 and cairn-<version>.manifest
# (every Debian and Python package version in the image). The ISO is a hybrid image: it boots from
# CD or USB stick on BIOS and UEFI, runs the appliance live and installs it (iso/rootfs/usr/local/
# sbin/cairn-install). Python wheels are fetched by the repository's venv (.venv, `make venv`)
# with this host's pip configuration and installed into the image offline. Debian downloads are
# cached under .cache/iso (CAIRN_ISO_CACHE overrides): the debootstrap tarball and the packages.
# apt checks every package against the signed index and the base is upgraded after unpacking, so
# a stale cache only costs time.
#
# CAIRN_ISO_SQUASHFS=lz4 compresses the system image with lz4 instead of zstd: the ISO is ~40%
# bigger, but it is made in a third of the time and boots and installs faster under emulation.
# For test builds; the manifest says which was used.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=$(realpath -m "${1:-$REPO/build/iso}")
CACHE=$(realpath -m "${CAIRN_ISO_CACHE:-$REPO/.cache/iso}")
VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
          "$REPO/pyproject.toml")
readonly HERE REPO OUT CACHE VERSION
readonly SUITE=bookworm
readonly NAME=cairn-$VERSION
readonly HOST_PYTHON=${CAIRN_ISO_PYTHON:-$REPO/.venv/bin/python}
readonly APT_OPTS=(-y -q --no-install-recommends -o APT::Sandbox::User=root)
readonly SQUASHFS_COMPRESSION=${CAIRN_ISO_SQUASHFS:-zstd}

started=$SECONDS
step() { printf '[%4ds] %s\n' $((SECONDS - started)) "$*"; }

# The mirrors this host's apt already uses, so the build works wherever the host's apt does.
host_site() {
    # shellcheck disable=SC2016  # apt's own field syntax
    apt-get indextargets --format '$(SITE)' "Release: $1" 'Identifier: Packages' | head -n1
}

check_host() {
    [ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
    local tool missing=()
    for tool in debootstrap mksquashfs grub-mkrescue xorriso mformat mkfs.vfat git; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -d /usr/lib/grub/i386-pc ] || missing+=(grub-pc-bin)
    [ -d /usr/lib/grub/x86_64-efi ] || missing+=(grub-efi-amd64-bin)
    [ -x "$HOST_PYTHON" ] || missing+=("$HOST_PYTHON (make venv)")
    case $SQUASHFS_COMPRESSION in
        zstd|lz4) ;;
        *) echo "build.sh: CAIRN_ISO_SQUASHFS=$SQUASHFS_COMPRESSION: expected zstd or lz4" >&2; exit 1 ;;
    esac
    if [ ${#missing[@]} -gt 0 ]; then
        echo "build.sh: missing ${missing[*]}; install the Makefile's APT_PACKAGES (make deps)" >&2
        exit 1
    fi
}

# ---- chroot mounts, always undone --------------------------------------------------------------
MOUNTS=()
BACKGROUND_JOB=
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; MOUNTS+=("$2"); }
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}"
    done
    MOUNTS=()
}
cleanup() {
    # Let it finish: what it runs in the chroot must not outlive the chroot's mounts.
    if [ -n "$BACKGROUND_JOB" ]; then
        wait "$BACKGROUND_JOB" 2>/dev/null || true
    fi
    unmount_all
    if $WORK_IN_MEMORY; then
        umount "$WORK" 2>/dev/null || umount -l "$WORK"
    fi
    rm -rf "$WORK"
}

# The build writes and deletes ~2 GiB in tens of thousands of files, and debootstrap's dpkg syncs
# each one: on a disk that is most of its time. In memory it is not, so the work directory is a
# tmpfs when the host can spare it (it holds at most ~2 GiB: the tree and the squashfs).
WORK_IN_MEMORY=false
readonly MEMORY_NEEDED_KIB=$((4 * 1024 * 1024))
work_in_memory() {
    local available
    available=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    if [ "${available:-0}" -ge "$MEMORY_NEEDED_KIB" ]; then
        mount -t tmpfs -o mode=0700 cairn-iso-build "$WORK"
        WORK_IN_MEMORY=true
        step "working in memory (tmpfs on $WORK)"
    else
        step "working on disk in $WORK (less than $((MEMORY_NEEDED_KIB / 1024 / 1024)) GiB of memory available)"
    fi
}

# A clean environment: nothing of the build host's (pip settings, proxies, locale) leaks in.
in_chroot() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        chroot "$ROOTFS" "$@"
}

bootstrap() {
    local mirror=$1 key tarball
    key=$(echo "$SUITE minbase $mirror" | sha256sum | cut -c1-12)
    tarball=$CACHE/debootstrap-$SUITE-$key.tar
    if [ ! -f "$tarball" ]; then
        step "downloading the base system into $tarball"
        mkdir -p "$WORK/make-tarball"
        debootstrap --variant=minbase --make-tarball="$tarball.part" "$SUITE" "$WORK/make-tarball" "$mirror" >/dev/null
        mv "$tarball.part" "$tarball"
    fi
    step "unpacking the base system"
    debootstrap --variant=minbase --unpack-tarball="$tarball" "$SUITE" "$ROOTFS" "$mirror" >/dev/null
}

# iso/packages.txt without its comments: one package a line.
packages() {
    grep -v '^\s*\(#\|$\)' "$HERE/packages.txt"
}

install_system() {
    local mirror=$1 security=$2
    bind /proc "$ROOTFS/proc"
    bind /sys "$ROOTFS/sys"
    bind /dev "$ROOTFS/dev"
    bind /dev/pts "$ROOTFS/dev/pts"
    mkdir -p "$ROOTFS/run" && mount -t tmpfs tmpfs "$ROOTFS/run" && MOUNTS+=("$ROOTFS/run")
    bind "$CACHE/apt-archives" "$ROOTFS/var/cache/apt/archives"

    cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
    # Packages must not start services inside the build machine.
    printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
    chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    # Before the packages: the initramfs configuration must be in place when the kernel arrives.
    cp -a "$HERE/rootfs/." "$ROOTFS/"
    mkdir -p "$ROOTFS/etc/network"  # live-boot writes interfaces there and complains without it

    # dpkg's fsync after every file protects a system against power loss; a build that is cut
    # short is thrown away anyway. Removed again before the image is made.
    echo force-unsafe-io > "$ROOTFS/etc/dpkg/dpkg.cfg.d/cairn-build-unsafe-io"

    step "installing Debian packages"
    in_chroot apt-get -q update >/dev/null
    # Every download first: once systemd-resolved is installed, the chroot's resolv.conf points
    # at a resolver that does not run here.
    # shellcheck disable=SC2046  # one package per word
    in_chroot apt-get "${APT_OPTS[@]}" --download-only install $(packages) >/dev/null
    in_chroot apt-get "${APT_OPTS[@]}" dist-upgrade >/dev/null
    # shellcheck disable=SC2046  # one package per word
    in_chroot apt-get "${APT_OPTS[@]}" install $(packages | grep -v '^linux-image-') >/dev/null
}

# After the other packages: the kernel's postinst builds the initramfs once, with the hooks of
# live-boot, zstd, udev and the rest already in place. Installed together, a trigger built it twice.
install_kernel() {
    step "installing the kernel and building its initramfs"
    # shellcheck disable=SC2046  # one package per word
    in_chroot apt-get "${APT_OPTS[@]}" install $(packages | grep '^linux-image-') >/dev/null
}

install_cairn() {
    step "installing Cairn into /opt/cairn"
    local src=$WORK/cairn-src wheels=$ROOTFS/tmp/wheels
    mkdir -p "$src" "$wheels"
    # Tracked and new files of the working tree, without what .gitignore excludes (venv, caches).
    git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$src" -xf -
    # The host runs the same Debian 12 Python, so its wheels fit the image.
    "$HOST_PYTHON" -m pip wheel -qq --disable-pip-version-check --wheel-dir "$wheels" "$src"
    # System site packages: libnbd's Python binding comes from Debian (python3-libnbd).
    in_chroot python3 -m venv --system-site-packages /opt/cairn
    in_chroot /opt/cairn/bin/pip install -q --disable-pip-version-check --no-index --find-links /tmp/wheels cairn
    rm -rf "$wheels"
    in_chroot /opt/cairn/bin/cairn --help >/dev/null
}

configure_system() {
    step "configuring the system"
    in_chroot systemctl --quiet enable cairn.service cairn-banner.service cairn-banner.path \
        cairn-install.service systemd-networkd.service systemd-resolved.service
    # agetty shows /etc/issue.d/*.issue; the banner itself lives in /run (it holds a password).
    mkdir -p "$ROOTFS/etc/issue.d" "$ROOTFS/var/lib/cairn"
    ln -sfn /run/cairn/console-banner "$ROOTFS/etc/issue.d/cairn.issue"
    # Every boot of the image (and every installed copy) gets its own machine id.
    : > "$ROOTFS/etc/machine-id"
    rm -f "$ROOTFS/var/lib/dbus/machine-id" "$ROOTFS/usr/sbin/policy-rc.d" \
          "$ROOTFS/etc/dpkg/dpkg.cfg.d/cairn-build-unsafe-io"
}

write_manifest() {
    local manifest=$1
    {
        echo "# Cairn $VERSION appliance image"
        echo "# source: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
        echo "# built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
        echo "# system image compression: $SQUASHFS_COMPRESSION"
        echo "# Debian packages: name version architecture"
        # shellcheck disable=SC2016  # dpkg's own field syntax
        in_chroot dpkg-query -W -f '${Package} ${Version} ${Architecture}\n'
        echo "# Python packages in /opt/cairn (pip freeze)"
        in_chroot /opt/cairn/bin/pip freeze --local --disable-pip-version-check
    } > "$manifest"
    mkdir -p "$ROOTFS/usr/share/cairn"
    cp "$manifest" "$ROOTFS/usr/share/cairn/manifest.txt"
}

trim_rootfs() {
    # apt's caches (its binary package index, the base system's packages that debootstrap
    # left in archives/) are rebuilt or fetched again by the first apt-get update.
    rm -rf "$ROOTFS/var/lib/apt/lists/"* "$ROOTFS/var/cache/apt/"*.bin "$ROOTFS/var/cache/apt/archives/"*.deb \
           "$ROOTFS/tmp/"* "$ROOTFS/var/tmp/"* "$ROOTFS/root/.cache" \
           "$ROOTFS/usr/share/man/"* "$ROOTFS/usr/share/info/"* "$ROOTFS/usr/share/locale/"*
    # Documentation goes, licences stay.
    find "$ROOTFS/usr/share/doc" -type f ! -name copyright -delete
    find "$ROOTFS/usr/share/doc" -type d -empty -delete
}

make_iso() {
    local manifest=$1 tree=$WORK/iso
    step "compressing the root file system"
    mkdir -p "$tree/live" "$tree/boot/grub"
    local compression
    case $SQUASHFS_COMPRESSION in
        # Level 9: nearly the size of the default level 15 in a fraction of the time.
        zstd) compression=(-comp zstd -Xcompression-level 9) ;;
        lz4) compression=(-comp lz4) ;;
    esac
    mksquashfs "$ROOTFS" "$tree/live/filesystem.squashfs" -noappend -no-progress -quiet \
        "${compression[@]}" -wildcards -e 'proc/*' 'sys/*' 'dev/*' 'run/*' 'tmp/*' \
        2> >(grep -v 'Unrecognised xattr prefix system.posix_acl' >&2)  # ACLs squashfs cannot keep (journal dir)
    cp "$ROOTFS"/boot/vmlinuz-* "$tree/live/vmlinuz"
    cp "$ROOTFS"/boot/initrd.img-* "$tree/live/initrd.img"
    sed "s/@VERSION@/$VERSION/g" "$HERE/grub.cfg" > "$tree/boot/grub/grub.cfg"
    cp "$manifest" "$tree/manifest.txt"
    (cd "$tree" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$WORK/sha256sum.txt"
    mv "$WORK/sha256sum.txt" "$tree/sha256sum.txt"

    step "writing the ISO"
    mkdir -p "$OUT"
    if ! grub-mkrescue -o "$OUT/$NAME.iso.part" "$tree" -- -volid CAIRN > "$WORK/grub-mkrescue.log" 2>&1; then
        cat "$WORK/grub-mkrescue.log" >&2
        exit 1
    fi
    mv "$OUT/$NAME.iso.part" "$OUT/$NAME.iso"
    (cd "$OUT" && sha256sum "$NAME.iso" > "$NAME.iso.sha256")
    cp "$manifest" "$OUT/$NAME.manifest"
}

main() {
    check_host
    local mirror security
    mirror=$(host_site "$SUITE")
    security=$(host_site "$SUITE-security")
    mirror=${mirror:-http://deb.debian.org/debian}
    security=${security:-http://deb.debian.org/debian-security}
    mkdir -p "$CACHE/apt-archives/partial"
    # One build at a time per cache.
    exec 9>"$CACHE/lock"
    flock 9

    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-iso.XXXXXX")
    ROOTFS=$WORK/rootfs
    trap cleanup EXIT
    work_in_memory
    bootstrap "$mirror"
    install_system "$mirror" "$security"
    # Each is mostly one core's work for a while (pip; the initramfs): side by side.
    install_cairn &
    BACKGROUND_JOB=$!
    install_kernel
    wait "$BACKGROUND_JOB"
    BACKGROUND_JOB=
    configure_system
    write_manifest "$WORK/manifest.txt"
    unmount_all
    trim_rootfs
    make_iso "$WORK/manifest.txt"
    step "done: $OUT/$NAME.iso ($(du -m "$OUT/$NAME.iso" | cut -f1) MiB)"
}

main
