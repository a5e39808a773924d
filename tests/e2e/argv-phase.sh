# Sourced by the end-to-end scripts: libvirt's own command lines, through the wrapper.
#
# argv_phase WORK XML_DIR WRAPPER VENDOR: Nova-shaped domains (a vfio-pci hostdev,
# numatune, locked memory, the CPU forms Nova writes, the kvm hidden flag) are written
# to XML_DIR and turned into libvirt's argv by the caller's `to_native FILE` (virsh
# domxml-to-native qemu-argv, against the caller's daemon). That argv is fed to
# WRAPPER in front of a recorder. The recorded argv must be libvirt's, word for word,
# but for the one -cpu value the contract changes. Needs `say`, `fail` and gcc.
argv_phase() {
  local work=$1 xml_dir=$2 wrapper=$3 vendor=$4
  local gpu_sys custom passthrough hidden argv_checked case name bus cpu feat cpu_xml feat_xml
  local native word prev model rest inject expected
  gcc -O2 -static -o "$work/recorder" "$(dirname "${BASH_SOURCE[0]}")/../fixtures/argv-recorder.c"
  gpu_sys="$work/argv-sys"
  mkdir -p "$gpu_sys/bus/pci/devices/0000:18:00.0" "$gpu_sys/bus/pci/devices/0000:3b:00.0"
  echo 0x030000 >"$gpu_sys/bus/pci/devices/0000:18:00.0/class" # VGA: a GPU with display
  echo 0x030200 >"$gpu_sys/bus/pci/devices/0000:3b:00.0/class" # 3D controller (Tesla)
  printf '[wrapper]\ntarget = "%s"\nhv_vendor_id = "%s"\n' "$work/recorder" "$vendor" >"$work/argv-config.toml"
  nova_xml() { # NAME BUS CPU-XML FEATURES-XML
    cat <<EOF
  <domain type='kvm'>
    <name>$1</name>
    <uuid>5f4e3c1a-9b7d-4e2f-8a6c-1d0e9f8b7a65</uuid>
    <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>vm</nova:name></nova:instance></metadata>
    <memory unit='KiB'>4194304</memory>
    <memoryBacking><locked/></memoryBacking>
    <vcpu placement='static'>2</vcpu>
    <numatune><memory mode='strict' nodeset='0'/></numatune>
    <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
    <features><acpi/><apic/>$4</features>
    $3
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>
        <source><address domain='0x0000' bus='0x$2' slot='0x00' function='0x0'/></source>
      </hostdev>
      <memballoon model='virtio'/>
    </devices>
  </domain>
EOF
  }
  custom="<cpu mode='custom' match='exact' check='none'><model fallback='allow'>Skylake-Client</model><topology sockets='1' dies='1' cores='2' threads='1'/></cpu>"
  passthrough="<cpu mode='host-passthrough' check='none'/>"
  hidden="<kvm><hidden state='on'/></kvm>"
  argv_checked=0
  for case in "vga-custom 18 custom none" "vga-passthrough 18 passthrough none" \
              "vga-hidden 18 custom hidden" "tesla-custom 3b custom none"; do
    read -r name bus cpu feat <<<"$case"
    cpu_xml=$custom; [ "$cpu" = passthrough ] && cpu_xml=$passthrough
    feat_xml=; [ "$feat" = hidden ] && feat_xml=$hidden
    nova_xml "argv-$name" "$bus" "$cpu_xml" "$feat_xml" >"$xml_dir/argv-$name.xml"
    native=$(to_native "argv-$name.xml") ||
      fail "virsh domxml-to-native qemu-argv failed for $name"
    eval "set -- $native"
    while [ $# -gt 0 ] && [[ $1 == *=* ]]; do shift; done # LC_ALL=C PATH=... HOME=...
    [ "$1" = /usr/bin/qemu-system-x86_64 ] || fail "$name: libvirt's argv starts with $1"
    shift
    # What the contract says comes out: libvirt's words, the -cpu value with kvm=off
    # (unless libvirt set kvm already) and our vendor id right after its model, and
    # that only for the VGA GPU under the default apply_to = "vga".
    expected=(/usr/libexec/qemu-kvm)
    prev=
    for word in "$@"; do
      if [ "$prev" = -cpu ] && [ "$bus" = 18 ]; then
        model=${word%%,*}
        rest=${word#"$model"}
        inject=",hv-vendor-id=$vendor"
        case ",$rest," in *,kvm=*) ;; *) inject=",kvm=off$inject" ;; esac
        word="$model$inject$rest"
      fi
      expected+=("$word")
      prev=$word
    done
    GPU_PASSTHROUGH_CONFIG=$work/argv-config.toml GPU_PASSTHROUGH_SYSFS=$gpu_sys \
      ARGV_RECORDER_OUT=$work/argv-$name.recorded \
      bash -c 'exec -a /usr/libexec/qemu-kvm "$0" "$@"' "$wrapper" "$@" 2>"$work/argv-$name.stderr" ||
      fail "$name: the wrapper failed on libvirt's argv: $(cat "$work/argv-$name.stderr")"
    # The recorder writes each word and a NUL, then the loop guard the wrapper set.
    { printf '%s\0' "${expected[@]}"; printf 'env GPU_PASSTHROUGH_WRAPPER_ACTIVE=%s' "$work/recorder"; } \
      >"$work/argv-$name.expected"
    cmp -s "$work/argv-$name.recorded" "$work/argv-$name.expected" ||
      fail "$name: the argv that reached qemu is not libvirt's with the contract's -cpu:
  $(tr '\0' '\n' <"$work/argv-$name.recorded")
  expected:
  $(printf '%s\n' "${expected[@]}")"
    grep -q '"driver":"vfio-pci","host":"0000:'"$bus"':00.0"' <<<"$native" ||
      fail "$name: libvirt wrote no JSON vfio-pci -device for 0000:$bus:00.0: $native"
    argv_checked=$((argv_checked + 1))
  done
  say "libvirt's own argv for $argv_checked Nova-shaped domains went through the wrapper as the contract says"
}
