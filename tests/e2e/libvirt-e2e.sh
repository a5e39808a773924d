#!/usr/bin/env bash
# End to end on a real libvirtd: the wrapper as a domain's <emulator>, the hook in
# /etc/libvirt/hooks/qemu.d/, real QEMU, a tiny multiboot guest that prints the
# hypervisor signature it sees.
#
# Usage: tests/e2e/libvirt-e2e.sh BIN_DIR [--demo]
#   BIN_DIR holds qemu-kvm-wrapper and gpu-passthrough-hook (target/<triple>/<profile>).
#   --demo prints the side-by-side summary for people instead of the test's lines.
#
# Needs root, Debian's qemu-system-x86, libvirt-daemon, libvirt-daemon-driver-qemu,
# libvirt-clients and gcc-multilib (scripts/setup installs them). Without systemd: it
# creates the libvirt-qemu user and the kvm group as the Debian packages do, starts
# virtlogd and libvirtd by hand and stops them by pid. It puts back everything it
# changed (/etc/gpu-passthrough, the hook, /dev/kvm's owner and mode) when it ends.
# Outside CI a missing prerequisite is one "SKIP:" line and exit 0; with CI=true it
# is a failure.
set -euo pipefail

bin_dir=$(cd "${1:?usage: libvirt-e2e.sh BIN_DIR [--demo]}" && pwd)
demo=false
[ "${2:-}" = --demo ] && demo=true
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=argv-phase.sh
. "$(dirname "${BASH_SOURCE[0]}")/argv-phase.sh"
say() { $demo || printf 'e2e [%3ss]: %s\n' "$SECONDS" "$*"; }
fail() { printf 'E2E FAIL: %s\n' "$*" >&2; exit 1; }
skip() {
  [ "${CI:-}" = true ] && fail "prerequisite missing in CI: $*"
  printf 'SKIP: end-to-end libvirt test: %s\n' "$*"
  exit 0
}

[ "$(id -u)" -eq 0 ] || skip "not root (it starts libvirtd and writes /etc/libvirt/hooks)"
for c in libvirtd virtlogd virsh qemu-system-x86_64 gcc; do
  command -v "$c" >/dev/null || skip "$c is not installed (scripts/setup installs it)"
done
for b in qemu-kvm-wrapper gpu-passthrough-hook; do
  [ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing: build the workspace first"
done
if [ -f /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; then
  skip "a libvirtd is already running (pid $(cat /run/libvirtd.pid)); this test starts its own"
fi

work=$(mktemp -d /tmp/gpu-passthrough-e2e.XXXXXX)
chmod 0777 "$work" # QEMU, as libvirt-qemu, writes the serial logs here
wrapper_dir=/usr/local/libexec/gpu-passthrough-e2e
wrapper=$wrapper_dir/qemu-kvm
hook=/etc/libvirt/hooks/qemu.d/gpu-passthrough
config=/etc/gpu-passthrough/config.toml
vendor=E2E_vendor
virsh() { command virsh -q -c qemu:///system "$@"; }

# What we change, and how to put it back.
kvm_owner=$(stat -c '%U:%G %a' /dev/kvm 2>/dev/null || true)
new_dirs=()
for d in /etc/gpu-passthrough /etc/libvirt/hooks /etc/libvirt/hooks/qemu.d; do
  [ -d "$d" ] || new_dirs+=("$d")
done
for f in "$hook" "$config"; do
  [ -e "$f" ] && cp -a "$f" "$work/$(basename "$f").saved"
done
cleanup() {
  set +e
  for d in gp-e2e-plain gp-e2e-wrapped gp-e2e-broken; do
    virsh destroy "$d" >/dev/null 2>&1
    virsh undefine "$d" >/dev/null 2>&1
  done
  stop_daemons
  # Definitions left behind if libvirtd was gone before undefine.
  rm -f /etc/libvirt/qemu/gp-e2e-*.xml
  rm -f "$hook" "$config"
  [ -e "$work/gpu-passthrough.saved" ] && cp -a "$work/gpu-passthrough.saved" "$hook"
  [ -e "$work/config.toml.saved" ] && cp -a "$work/config.toml.saved" "$config"
  rm -rf "$wrapper_dir"
  for ((i = ${#new_dirs[@]} - 1; i >= 0; i--)); do rmdir "${new_dirs[i]}" 2>/dev/null; done
  if [ -n "$kvm_owner" ]; then
    chown "${kvm_owner% *}" /dev/kvm
    chmod "${kvm_owner#* }" /dev/kvm
  fi
  rm -rf "$work"
}
trap cleanup EXIT

stop_daemons() {
  for p in /run/libvirtd.pid /run/virtlogd.pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$p"
  done
}

start_daemons() {
  # The directories libvirt-daemon-system ships, with its owners and modes.
  install -d -m 0755 /var/lib/libvirt /run/libvirt
  install -d -m 0700 /var/log/libvirt /var/log/libvirt/qemu
  install -d -m 0751 -o libvirt-qemu -g libvirt-qemu /var/lib/libvirt/qemu
  virtlogd -d
  libvirtd -d
  for _ in $(seq 150); do
    virsh version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "libvirtd did not answer within 30 s"
}

# Users and groups as Debian's libvirt-daemon-system makes them.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 ||
  useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
    --no-create-home --shell /usr/sbin/nologin libvirt-qemu
if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi

# The guest, and whether it runs under KVM here (a PVM-backed /dev/kvm runs it; a
# full Linux kernel would hang).
gcc -m32 -ffreestanding -nostdlib -fno-pic -no-pie -static -O2 -Wl,--build-id=none \
  -Wl,-Ttext=0x100000 -o "$work/guest.elf" "$here/guest.c"
chmod 0644 "$work/guest.elf"
virt_type=qemu
if [ -e /dev/kvm ] && timeout 30 qemu-system-x86_64 -accel kvm -machine pc -cpu qemu64 -m 64 \
  -display none -nodefaults -serial "file:$work/probe.serial" -kernel "$work/guest.elf" \
  >/dev/null 2>&1 && grep -q 'HVSIG:\[KVMKVMKVM\]' "$work/probe.serial"; then
  virt_type=kvm
fi
say "guest built; domains use type='$virt_type'"

domain_xml() { # NAME EMULATOR [HOSTDEV-XML]
  cat <<EOF
<domain type='$virt_type'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest.elf</kernel></os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>$2</emulator>
    <serial type='file'><source path='$work/$1.serial'/><target port='0'/></serial>
    <memballoon model='none'/>
    ${3:-}
  </devices>
</domain>
EOF
}

wait_shut_off() {
  for _ in $(seq 300); do
    [ "$(virsh domstate "$1" 2>/dev/null)" = "shut off" ] && return 0
    sleep 0.1
  done
  fail "$1 did not power off within 30 s"
}

# Start NAME N times, wait for each power-off; print the median of the `virsh start`
# times in ms.
time_starts() {
  local times=()
  for _ in $(seq "$2"); do
    local t0 t1
    t0=$(date +%s%N)
    virsh start "$1" >/dev/null || fail "virsh start $1 failed"
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
    wait_shut_off "$1"
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

install -d -m 0755 "$wrapper_dir"
install -m 0755 "$bin_dir/qemu-kvm-wrapper" "$wrapper"
install -d -m 0755 /etc/gpu-passthrough
cat >"$config" <<EOF
[wrapper]
target = "/usr/bin/qemu-system-x86_64"
hv_vendor_id = "$vendor"
# No GPU here: "all" shows the rewrite on the tiny guest.
apply_to = "all"
EOF
chmod 0644 "$config"

# Phase 1: libvirtd without our hook, the plain emulator.
rm -f "$hook" /etc/libvirt/qemu/gp-e2e-*.xml
start_daemons
domain_xml gp-e2e-plain /usr/bin/qemu-system-x86_64 >"$work/plain.xml"
virsh define "$work/plain.xml" >/dev/null
plain_no_hook=$(time_starts gp-e2e-plain 3)
plain_sig=$(grep -ao 'HVSIG:\[[^]]*\]' "$work/gp-e2e-plain.serial" | tail -n 1)
say "plain QEMU, no hook: start ${plain_no_hook} ms, guest saw ${plain_sig:-nothing}"
stop_daemons
say "daemons stopped"

# Phase 2: the hook installed before libvirtd starts (it reads hooks only then).
# libvirt runs hooks with a cleared environment, so a two-line script in front of the
# real binary gives it this test's settings: the ledger in $work/state, and (test
# only, this machine has no GPU) the ledger widened to domains without host devices.
install -d -m 0755 /etc/libvirt/hooks/qemu.d "$work/state"
printf '#!/bin/sh\nGPU_PASSTHROUGH_STATE_DIR=%s GPU_PASSTHROUGH_HOSTNAME=e2e-host GPU_PASSTHROUGH_LEDGER_ALL_DOMAINS=1 exec %s "$@"\n' \
  "$work/state" "$bin_dir/gpu-passthrough-hook" >"$hook"
chmod 0755 "$hook"
start_daemons
say "libvirtd restarted with the hook"
domain_xml gp-e2e-wrapped "$wrapper" >"$work/wrapped.xml"
virsh define "$work/wrapped.xml" >/dev/null
plain_hook=$(time_starts gp-e2e-plain 3)
wrapped_hook=$(time_starts gp-e2e-wrapped 3)
say "timed starts done"

# libvirt's own command lines for Nova-shaped domains, through the wrapper.
to_native() { virsh domxml-to-native qemu-argv "$work/$1"; }
argv_phase "$work" "$work" "$wrapper" "$vendor"

# The wrapped domain, paused, over QMP.
: >"$work/gp-e2e-wrapped.serial"
virsh start --paused gp-e2e-wrapped >/dev/null || fail "virsh start --paused gp-e2e-wrapped failed"
qom() {
  virsh qemu-monitor-command gp-e2e-wrapped \
    "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/unattached/device[0]\",\"property\":\"$1\"}}"
}
kvm_prop=$(qom kvm)
vendor_prop=$(qom hv-vendor-id)
echo "$kvm_prop" | grep -q '"return":false' || fail "qom-get kvm: $kvm_prop (expected false)"
echo "$vendor_prop" | grep -q "\"return\":\"$vendor\"" || fail "qom-get hv-vendor-id: $vendor_prop (expected $vendor)"
say "QMP on the wrapped domain: kvm=false, hv-vendor-id=$vendor"
log=/var/log/libvirt/qemu/gp-e2e-wrapped.log
rewrite_line=$(grep -a 'qemu-kvm-wrapper: -cpu' "$log" | tail -n 1)
echo "$rewrite_line" | grep -q "kvm=off,hv-vendor-id=$vendor" ||
  fail "no rewrite line in $log: $(tail -n 5 "$log")"
say "domain log: $rewrite_line"
virsh resume gp-e2e-wrapped >/dev/null
wait_shut_off gp-e2e-wrapped
wrapped_sig=$(grep -ao 'HVSIG:\[[^]]*\]' "$work/gp-e2e-wrapped.serial" | tail -n 1)
[ -n "$wrapped_sig" ] || fail "the wrapped guest printed nothing"
plain_feat=$(grep -ao 'KVMFEAT:\[[^]]*\] kvmclock=[01]' "$work/gp-e2e-plain.serial" | tail -n 1)
wrapped_feat=$(grep -ao 'KVMFEAT:\[[^]]*\] kvmclock=[01]' "$work/gp-e2e-wrapped.serial" | tail -n 1)
if [ "$virt_type" = kvm ]; then
  [ "$plain_sig" = 'HVSIG:[KVMKVMKVM]' ] || fail "plain guest under KVM saw $plain_sig"
  [ "$wrapped_sig" = 'HVSIG:[]' ] || fail "wrapped guest under KVM saw $wrapped_sig, expected nothing"
  # What kvm=off costs: the KVM feature leaf, and kvmclock with it.
  case "$plain_feat" in *'] kvmclock=1') ;; *) fail "plain guest under KVM: no kvmclock in $plain_feat" ;; esac
  [ "$wrapped_feat" = 'KVMFEAT:[none] kvmclock=0' ] || fail "wrapped guest still has the KVM feature leaf: $wrapped_feat"
fi
say "guest signature: plain ${plain_sig}, wrapped ${wrapped_sig}"
say "KVM feature leaf: plain ${plain_feat}, wrapped ${wrapped_feat} (the cost of kvm=off)"

# A GPU domain that cannot work: the hook refuses it, and virsh says why.
domain_xml gp-e2e-broken "$wrapper" "<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>" >"$work/broken.xml"
virsh define "$work/broken.xml" >/dev/null
if broken_out=$(virsh start gp-e2e-broken 2>&1); then
  fail "the broken GPU domain started: $broken_out"
fi
echo "$broken_out" | grep -q "gpu-passthrough-hook: refusing to start domain 'gp-e2e-broken'" ||
  fail "virsh's error lacks the hook's message: $broken_out"
echo "$broken_out" | grep -q "0000:7f:1f.7" || fail "the refusal does not name the device: $broken_out"
say "the broken GPU domain was refused by the hook"

# The ledger: real libvirtd's start and destroy of each domain gave start and stop.
ledger=$(cat "$work"/state/usage/*.jsonl)
count() { printf '%s\n' "$ledger" | grep -cF "\"event\":\"$1\",\"host\":\"e2e-host\",\"domain\":\"$2\"" || true; }
[ "$(count start gp-e2e-plain)" = 3 ] && [ "$(count stop gp-e2e-plain)" = 3 ] ||
  fail "ledger: expected 3 starts and 3 stops of gp-e2e-plain: $ledger"
[ "$(count start gp-e2e-wrapped)" = 4 ] && [ "$(count stop gp-e2e-wrapped)" = 4 ] ||
  fail "ledger: expected 4 starts and 4 stops of gp-e2e-wrapped: $ledger"
[ "$(count refused gp-e2e-broken)" = 1 ] || fail "ledger: no refusal of gp-e2e-broken: $ledger"
say "ledger: $(printf '%s\n' "$ledger" | wc -l) records, start and stop of every run, the refusal"
GPU_PASSTHROUGH_STATE_DIR=$work/state "$bin_dir/gpu-passthrough" metrics --textfile-dir "$work/prom" ||
  fail "gpu-passthrough metrics failed"
grep -qxF 'gpu_passthrough_refusals_total{check="device"} 1' "$work/prom/gpu_passthrough.prom" ||
  fail "metrics: the refusal is not counted: $(cat "$work/prom/gpu_passthrough.prom")"

if $demo; then
  printf '\n%-28s %-24s %s\n' "" "plain QEMU" "gpu-passthrough wrapper + hook"
  printf '%-28s %-24s %s\n' "what the guest saw (CPUID)" "$plain_sig" "$wrapped_sig"
  printf '%-28s %-24s %s\n' "KVM features (0x40000001)" "${plain_feat#KVMFEAT:}" "${wrapped_feat#KVMFEAT:}"
  printf '%-28s %-24s %s\n' "-cpu" "qemu64" "qemu64,kvm=off,hv-vendor-id=$vendor"
  printf '%-28s %-24s %s\n' "virsh start, median of 3" "$plain_no_hook ms (no hook)" "$wrapped_hook ms"
  printf '%-28s %s\n' "accelerator" "$virt_type"
  printf '\nWhat the hook said about a GPU domain whose device does not exist:\n%s\n' "$broken_out"
  printf '\nThe usage ledger (%s), its last lines:\n' "$work/state/usage"
  printf '%s\n' "$ledger" | tail -n 3
  printf '\ngpu-passthrough metrics (for node_exporter), the refusal counters:\n'
  grep -E '^gpu_passthrough_refusals_total\{check="(device|iommu)"\}' "$work/prom/gpu_passthrough.prom"
else
  printf 'e2e figures: virsh start median of 3 (ms): plain without hook %s, plain with hook %s, wrapper with hook %s (domain type %s)\n' \
    "$plain_no_hook" "$plain_hook" "$wrapped_hook" "$virt_type"
  echo "e2e: PASS"
fi
