# gpu-passthrough: build, test, benchmark.
#
#   make demo     the main job: the suite on a real libvirtd, side by side with plain QEMU
#   make test     install what the tests need (as root), build, run every test
#   make build    statically linked release binaries in $(RELEASE_DIR)
#   make bench    wrapper start-up cost, binary size and hook cost per call, as figures
#   make lint     rustfmt and clippy, as CI runs them

CARGO        ?= cargo
TRIPLE       := x86_64-unknown-linux-gnu
RELEASE_DIR  := target/$(TRIPLE)/release
BINARIES     := qemu-kvm-wrapper gpu-passthrough-hook gpu-passthrough

.PHONY: all build setup test lint bench demo clean

all: build

build:
	$(CARGO) build --release --workspace --locked

setup:
	scripts/setup

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The integration tests run the workspace's binaries, so build them first. The
# end-to-end test on a real libvirtd (root; it restarts its own libvirtd) runs last,
# with its figures shown.
test: setup lint
	$(CARGO) build --workspace --locked
	$(CARGO) test --workspace --locked
	$(CARGO) test -p integration-tests --test it --locked -- --ignored --nocapture e2e::

# The main job: build, bring up libvirt, start the tiny guest through plain QEMU and
# through the wrapper and hook, show what each guest saw and what the hook said.
demo: setup build
	tests/e2e/libvirt-e2e.sh $(RELEASE_DIR) --demo

bench: build
	bench/wrapper-startup
	$(CARGO) bench -p integration-tests --bench hook --locked

clean:
	$(CARGO) clean
