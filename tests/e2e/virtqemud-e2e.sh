#!/usr/bin/env bash
# End to end on the modular libvirt daemon: virtqemud + virtlogd of libvirt 11.3 with
# QEMU 10, in a Debian 13 root. Debian ships no split daemons, so virtqemud is built
# from Debian's own libvirt source in that root (see ../shared/tools/libvirt-trixie/).
# The hook is called by virtqemud, the wrapper is the domain's emulator, libvirt 11's
# JSON `-device` and its `-cpu` go through the wrapper, a GPU domain that cannot work is
# refused with the hook's paragraph in virsh's error, and the ledger records it all.
#
# Usage: tests/e2e/virtqemud-e2e.sh BIN_DIR
#   BIN_DIR holds the static qemu-kvm-wrapper, gpu-passthrough-hook, gpu-passthrough.
#
# The root is built once and kept in $GPU_PASSTHROUGH_E2E_CACHE (default
# /var/cache/gpu-passthrough-e2e; about 1.5 GB with the build tree), rebuilt when this
# script's package list changes. Needs root, mmdebstrap and a Debian mirror (the one
# apt uses). Outside CI a missing prerequisite is one "SKIP:" line; with CI=true a
# failure. The daemons run in a private mount namespace whose "/" is the root: nothing
# of the host changes.
set -euo pipefail

bin_dir=$(cd "${1:?usage: virtqemud-e2e.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { printf 'virtqemud-e2e [%3ss]: %s\n' "$SECONDS" "$*"; }
fail() { printf 'VIRTQEMUD E2E FAIL: %s\n' "$*" >&2; exit 1; }
skip() {
  [ "${CI:-}" = true ] && fail "prerequisite missing in CI: $*"
  printf 'SKIP: virtqemud end-to-end test: %s\n' "$*"
  exit 0
}
[ "$(id -u)" -eq 0 ] || skip "not root"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (scripts/setup installs it)"
for b in qemu-kvm-wrapper gpu-passthrough-hook gpu-passthrough; do
  [ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing: build the workspace first"
done
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || skip "no Debian mirror found in the apt sources"

cache=${GPU_PASSTHROUGH_E2E_CACHE:-/var/cache/gpu-passthrough-e2e}
builddeps=xz-utils,patch,meson,ninja-build,pkgconf,gettext,libxml2-dev,libxml2-utils,xsltproc,libglib2.0-dev,libgnutls28-dev,libtirpc-dev,python3-docutils,libjson-c-dev,libnl-3-dev,libnl-route-3-dev,libcap-ng-dev,libudev-dev,libpciaccess-dev,libselinux1-dev,libapparmor-dev,libacl1-dev,libattr1-dev,libaudit-dev,libdevmapper-dev,libnuma-dev,libsasl2-dev,libblkid-dev,libreadline-dev,libpcap0.8-dev,libbsd-dev,systemtap-sdt-dev
packages=libvirt-daemon-driver-qemu,libvirt-daemon-log,libvirt-clients,qemu-system-x86,gcc,$builddeps
stamp=$(printf '%s\n%s\n' "$packages" v1 | sha256sum | cut -c1-16)
R=$cache/trixie-$stamp

if [ ! -x "$R/usr/sbin/virtqemud" ]; then
  if [ ! -e "$R.tmp/.mmdebstrap-done" ]; then
    rm -rf "$cache"/trixie-*
    mkdir -p "$cache"
    say "building the Debian 13 root ($mirror) into $R"
    mmdebstrap --variant=apt --include="$packages" trixie "$R.tmp" \
      "deb $mirror trixie main" "deb-src $mirror trixie main" >"$cache/mmdebstrap.log" 2>&1 ||
      fail "mmdebstrap failed: $(tail -n 5 "$cache/mmdebstrap.log")"
    touch "$R.tmp/.mmdebstrap-done"
  fi
  say "building virtqemud from Debian's libvirt source in the root"
  C0() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$R.tmp" "$@"; }
  C0 sh -ec 'apt-get update -qq || true; rm -rf /build; mkdir -p /build; cd /build
    apt-get source --download-only -qq libvirt >/dev/null 2>&1 || true
    ls libvirt_*.orig.tar.xz libvirt_*.debian.tar.xz >/dev/null
    tar xf libvirt_*.orig.tar.xz; cd libvirt-*/; tar xf ../libvirt_*.debian.tar.xz
    grep -v "^#" debian/patches/series | while read -r p _; do [ -n "$p" ] && patch -p1 -s < "debian/patches/$p"; done
    meson setup /build/b --prefix=/usr --sysconfdir=/etc --localstatedir=/var --libdir=lib/x86_64-linux-gnu \
      --buildtype=plain -Dc_args="-O2 -g0" --libexecdir=/usr/lib/libvirt -Drunstatedir=/run -Dno_git=true \
      -Ddriver_libvirtd=enabled -Ddriver_qemu=enabled -Ddriver_remote=enabled -Dremote_default_mode=legacy -Ddriver_network=enabled \
      -Dqemu_user=libvirt-qemu -Dqemu_group=libvirt-qemu -Dqemu_moddir=/usr/lib/x86_64-linux-gnu/qemu -Dqemu_datadir=/usr/share/qemu \
      -Ddocs=disabled -Dtests=disabled -Dnls=disabled -Drpath=disabled -Dinit_script=none \
      -Dpolkit=enabled -Dsasl=enabled -Dselinux=enabled -Dsecdriver_selinux=enabled -Dapparmor=enabled -Dsecdriver_apparmor=enabled \
      -Dcapng=enabled -Dlibnl=enabled -Dudev=enabled -Dpciaccess=enabled -Djson_c=enabled -Daudit=enabled -Dattr=enabled \
      -Dnumactl=enabled -Ddtrace=enabled -Ddriver_ch=disabled -Ddriver_bhyve=disabled -Ddriver_hyperv=disabled -Ddriver_vz=disabled \
      -Ddriver_esx=disabled -Dcurl=disabled -Ddriver_libxl=disabled -Ddriver_vbox=disabled -Ddriver_lxc=disabled -Dstorage_rbd=disabled \
      -Dstorage_gluster=disabled -Dglusterfs=disabled -Dwireshark_dissector=disabled -Dnbdkit=disabled -Dsanlock=disabled \
      -Dlibiscsi=disabled -Dstorage_iscsi_direct=disabled -Dfuse=disabled -Dlogin_shell=disabled >/build/setup.log 2>&1
    ninja -C /build/b src/virtqemud >/build/ninja.log 2>&1
    install -m 755 /build/b/src/virtqemud /usr/sbin/virtqemud
    rm -rf /build' || fail "building virtqemud failed: $(tail -n 20 "$R.tmp"/build/*.log 2>/dev/null)"
  mv "$R.tmp" "$R"
  say "root ready"
fi

# A fresh copy of the root's writable state for each run: the root itself stays clean.
W=$(mktemp -d /tmp/gpu-passthrough-virtqemud.XXXXXX)
cleanup() {
  set +e
  [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" "$(cat "$W/virtlogd.pid" 2>/dev/null)" 2>/dev/null
  for _ in $(seq 50); do [ -n "${daemon_pid:-}" ] && [ -e "/proc/$daemon_pid" ] || break; sleep 0.1; done
  rm -rf "$W"
}
trap cleanup EXIT
# An overlay keeps the cached root read-only under this run's changes.
mkdir -p "$W/upper" "$W/work" "$W/root"
stage() { # copy into the overlay's upper layer, which the daemons see as /
  mkdir -p "$W/upper/$(dirname "$1")"
  cp "$2" "$W/upper/$1"
}
gcc -m32 -ffreestanding -nostdlib -fno-pic -no-pie -static -O2 -Wl,--build-id=none \
  -Wl,-Ttext=0x100000 -o "$W/guest.elf" "$here/guest.c"
stage srv/e2e/guest.elf "$W/guest.elf"
stage usr/local/libexec/gpu-passthrough-e2e/qemu-kvm "$bin_dir/qemu-kvm-wrapper"
stage usr/local/libexec/gpu-passthrough-e2e/gpu-passthrough-hook "$bin_dir/gpu-passthrough-hook"
stage usr/local/sbin/gpu-passthrough "$bin_dir/gpu-passthrough"
mkdir -p "$W/upper/etc/libvirt/hooks/qemu.d" "$W/upper/etc/gpu-passthrough" "$W/upper/srv/e2e/state"
# libvirt runs hooks with a cleared environment; this test's settings come from a
# two-line script in front of the binary (test only: the ledger widened to domains
# without host devices, as this machine has no GPU).
printf '#!/bin/sh\nGPU_PASSTHROUGH_STATE_DIR=/srv/e2e/state GPU_PASSTHROUGH_HOSTNAME=virtqemud-e2e GPU_PASSTHROUGH_LEDGER_ALL_DOMAINS=1 exec /usr/local/libexec/gpu-passthrough-e2e/gpu-passthrough-hook "$@"\n' \
  >"$W/upper/etc/libvirt/hooks/qemu.d/gpu-passthrough"
chmod 0755 "$W/upper/etc/libvirt/hooks/qemu.d/gpu-passthrough"
cat >"$W/upper/etc/gpu-passthrough/config.toml" <<EOF
[wrapper]
target = "/usr/bin/qemu-system-x86_64"
hv_vendor_id = "E2E_vendor"
# No GPU here: "all" shows the rewrite on the tiny guest.
apply_to = "all"
EOF
chmod 0755 "$W/upper/usr/local/libexec/gpu-passthrough-e2e/"* "$W/upper/usr/local/sbin/gpu-passthrough"
chmod 0777 "$W/upper/srv/e2e"

# The daemons, in a private mount namespace whose "/" is the overlay (mount --move, as
# systemd-nspawn does); every mount vanishes with the namespace.
unshare --mount --propagation private -- /bin/bash -ec '
  R='"$R"' W='"$W"'
  mount -t overlay overlay -o "lowerdir=$R,upperdir=$W/upper,workdir=$W/work" "$W/root"
  N=$W/root
  mount -t proc proc "$N/proc"
  mount --rbind /sys "$N/sys"
  mount -t tmpfs -o mode=755,nosuid tmpfs "$N/dev"; mkdir -p "$N/dev/pts" "$N/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$N/dev/pts"; mount -t tmpfs -o mode=1777 tmpfs "$N/dev/shm"
  ln -s pts/ptmx "$N/dev/ptmx"; ln -s /proc/self/fd "$N/dev/fd"
  for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do IFS=: read -r a b c <<<"$n"; mknod -m 666 "$N/dev/$a" c $b $c; done
  [ -c /dev/kvm ] && { mknod -m 660 "$N/dev/kvm" c 10 232; chroot "$N" chgrp kvm /dev/kvm; }
  mount -t tmpfs -o mode=755 tmpfs "$N/run"
  cd "$N"; mount --move . /
  exec chroot . /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -ec "virtlogd -d -p /run/virtlogd.pid; virtqemud -d -p /run/virtqemud.pid"' ||
  fail "cannot start virtlogd and virtqemud"
# The daemons' namespace: find virtqemud by its name under our overlay.
for _ in $(seq 100); do
  daemon_pid=$(pgrep -nx virtqemud || true)
  [ -n "$daemon_pid" ] && break
  sleep 0.1
done
[ -n "$daemon_pid" ] || fail "virtqemud did not start"
NS() { nsenter -t "$daemon_pid" -m -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
V() { NS virsh -q -c qemu:///system "$@"; }
NS cat /run/virtlogd.pid >"$W/virtlogd.pid" 2>/dev/null || true
for _ in $(seq 300); do V version >/dev/null 2>&1 && break; sleep 0.1; done
V version >/dev/null 2>&1 || fail "virtqemud does not answer"
say "virtqemud up: $(V version | tr '\n' ' ')"
NS sh -c 'ps -o comm= -p 1' >/dev/null 2>&1 || true

virt_type=qemu
if [ -c /dev/kvm ] && NS timeout 30 qemu-system-x86_64 -accel kvm -machine pc -cpu qemu64 -m 64 \
  -display none -nodefaults -serial file:/srv/e2e/probe.serial -kernel /srv/e2e/guest.elf >/dev/null 2>&1 &&
  NS grep -q 'HVSIG:\[KVMKVMKVM\]' /srv/e2e/probe.serial; then
  virt_type=kvm
fi
domain_xml() { # NAME [HOSTDEV-XML]
  cat <<EOF
<domain type='$virt_type'><name>$1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>/srv/e2e/guest.elf</kernel></os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><emulator>/usr/local/libexec/gpu-passthrough-e2e/qemu-kvm</emulator>
    <serial type='file'><source path='/srv/e2e/$1.serial'/><target port='0'/></serial>
    <memballoon model='none'/>${2:-}</devices>
</domain>
EOF
}
domain_xml vq-wrapped >"$W/upper/srv/e2e/wrapped.xml"
V define /srv/e2e/wrapped.xml >/dev/null || fail "virsh define failed"
V start vq-wrapped >/dev/null || fail "virsh start vq-wrapped failed: $(NS tail -n 5 /var/log/libvirt/qemu/vq-wrapped.log)"
for _ in $(seq 300); do [ "$(V domstate vq-wrapped)" = "shut off" ] && break; sleep 0.1; done
sig=$(NS grep -ao 'HVSIG:\[[^]]*\]' /srv/e2e/vq-wrapped.serial | tail -n 1)
feat=$(NS grep -ao 'KVMFEAT:\[[^]]*\] kvmclock=[01]' /srv/e2e/vq-wrapped.serial | tail -n 1)
[ -n "$sig" ] || fail "the wrapped guest printed nothing"
if [ "$virt_type" = kvm ]; then
  [ "$sig" = 'HVSIG:[]' ] || fail "the wrapped guest under KVM saw $sig"
  [ "$feat" = 'KVMFEAT:[none] kvmclock=0' ] || fail "the wrapped guest still has the KVM feature leaf: $feat"
fi
say "guest (type $virt_type) saw $sig, $feat"
log=$(NS cat /var/log/libvirt/qemu/vq-wrapped.log)
rewrite=$(printf '%s\n' "$log" | grep -a 'qemu-kvm-wrapper: -cpu' | tail -n 1)
printf '%s\n' "$rewrite" | grep -q 'kvm=off,hv-vendor-id=E2E_vendor' || fail "no rewrite line in the domain log: $log"
say "domain log: $rewrite"
# libvirt 11 writes every -device as JSON: the wrapper took the command line whole.
printf '%s\n' "$log" | grep -aqF -- "-device '{\"driver\":" || fail "libvirt 11 did not write JSON -device (log: $log)"
say "libvirt 11's JSON -device and its -cpu went through the wrapper"
# libvirt 11's own command lines for Nova-shaped domains, through the wrapper.
# shellcheck source=argv-phase.sh
. "$here/argv-phase.sh"
to_native() { V domxml-to-native qemu-argv "/srv/e2e/$1"; }
argv_phase "$W" "$W/upper/srv/e2e" "$bin_dir/qemu-kvm-wrapper" E2E_vendor

domain_xml vq-broken "<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>" \
  >"$W/upper/srv/e2e/broken.xml"
V define /srv/e2e/broken.xml >/dev/null
if out=$(V start vq-broken 2>&1); then
  fail "the broken GPU domain started under virtqemud: $out"
fi
printf '%s\n' "$out" | grep -q "gpu-passthrough-hook: refusing to start domain 'vq-broken'" ||
  fail "virsh's error lacks the hook's paragraph: $out"
say "virtqemud ran the hook; it refused the broken GPU domain: $(printf '%s' "$out" | head -c 160)..."

ledger=$(NS sh -c 'cat /srv/e2e/state/usage/*.jsonl')
for want in '"event":"start","host":"virtqemud-e2e","domain":"vq-wrapped"' \
  '"event":"stop","host":"virtqemud-e2e","domain":"vq-wrapped"' \
  '"event":"refused","host":"virtqemud-e2e","domain":"vq-broken"'; do
  printf '%s\n' "$ledger" | grep -qF "$want" || fail "ledger lacks $want: $ledger"
done
say "ledger: start, stop and refusal written by the hook under virtqemud"
echo "virtqemud-e2e: PASS"
