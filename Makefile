# gpu-passthrough: build, test, benchmark.
#
#   make demo     the main job: the suite on a real libvirtd, side by side with plain QEMU
#   make test     install what the tests need (as root), build, run every test
#   make build    statically linked release binaries in $(RELEASE_DIR)
#   make bench    wrapper start-up cost, binary size and hook cost per call, as figures
#   make rpm      target/rpm/gpu-passthrough-*.x86_64.rpm and .src.rpm
#   make lint     rustfmt and clippy, as CI runs them
#   make mutants  mutation testing of qemu-wrapper and host-model (slow; not in CI)

CARGO        ?= cargo
TRIPLE       := x86_64-unknown-linux-gnu
RELEASE_DIR  := target/$(TRIPLE)/release
BINARIES     := qemu-kvm-wrapper gpu-passthrough-hook gpu-passthrough

# Installation (the RPM spec calls `make install DESTDIR=... BIN_DIR=...`).
PREFIX       ?= /usr
SYSCONFDIR   ?= /etc
LIBEXECDIR   ?= $(PREFIX)/libexec
SBINDIR      ?= $(PREFIX)/sbin
DATADIR      ?= $(PREFIX)/share
MANDIR       ?= $(DATADIR)/man
STATEDIR     ?= /var/lib
UNITDIR      ?= $(PREFIX)/lib/systemd/system
BIN_DIR      ?= $(RELEASE_DIR)

.PHONY: all build setup test lint bench demo install rpm clean mutants

all: build

build:
	$(CARGO) build --release --workspace --locked

setup:
	scripts/setup

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The integration tests run the workspace's binaries, so build them first. The
# tests that take over something of the machine's (a libvirtd of their own, the
# journald socket) are #[ignore]d there and run last, one at a time, figures shown.
test: setup lint
	$(CARGO) build --workspace --locked
	$(CARGO) test --workspace --locked
	$(CARGO) test -p integration-tests --test it --locked -- --ignored --nocapture --test-threads=1

# The main job: build, bring up libvirt, start the tiny guest through plain QEMU and
# through the wrapper and hook, show what each guest saw and what the hook said.
demo: setup build
	tests/e2e/libvirt-e2e.sh $(RELEASE_DIR) --demo

bench: build
	bench/wrapper-startup
	$(CARGO) bench -p integration-tests --bench hook --locked
	$(CARGO) bench -p integration-tests --bench usage --locked

# Mutation testing of qemu-wrapper and host-model (scripts/mutants): cargo-mutants
# changes the code one mutant at a time and runs the package's own tests; the
# wrapper's main.rs mutants are judged by tests/it/wrapper.rs (scripts/
# mutants-wrapper-main). Prints the share of viable mutants caught. MUTANTS_ARGS goes
# to cargo-mutants, e.g. MUTANTS_ARGS="--file host-model/src/pci.rs".
# Results: target/mutants/.
MUTANTS_ARGS ?=
mutants:
	scripts/mutants $(MUTANTS_ARGS)

# Installs what BIN_DIR holds; builds nothing (the spec builds first, or packages
# prebuilt binaries). The man pages come from the CLI's own definition (clap_mangen).
install:
	install -D -m 0755 $(BIN_DIR)/qemu-kvm-wrapper $(DESTDIR)$(LIBEXECDIR)/gpu-passthrough/qemu-kvm-wrapper
	install -D -m 0755 $(BIN_DIR)/gpu-passthrough-hook $(DESTDIR)$(LIBEXECDIR)/gpu-passthrough/gpu-passthrough-hook
	install -D -m 0755 $(BIN_DIR)/gpu-passthrough $(DESTDIR)$(SBINDIR)/gpu-passthrough
	install -D -m 0644 rpm/config.toml $(DESTDIR)$(SYSCONFDIR)/gpu-passthrough/config.toml
	install -D -m 0644 rpm/gpu-passthrough.cil $(DESTDIR)$(DATADIR)/gpu-passthrough/gpu-passthrough.cil
	install -D -m 0644 rpm/gpu-passthrough-metrics.service $(DESTDIR)$(UNITDIR)/gpu-passthrough-metrics.service
	install -D -m 0644 rpm/gpu-passthrough-metrics.timer $(DESTDIR)$(UNITDIR)/gpu-passthrough-metrics.timer
	install -D -m 0644 rpm/grafana/gpu-passthrough.json $(DESTDIR)$(DATADIR)/gpu-passthrough/grafana/gpu-passthrough.json
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(STATEDIR)/gpu-passthrough
	$(BIN_DIR)/gpu-passthrough man $(DESTDIR)$(MANDIR)/man8

# The binary RPM (static release binaries) and the source RPM (vendored crates).
rpm: build
	rpm/build-rpm $(RELEASE_DIR)

clean:
	$(CARGO) clean
