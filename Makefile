# vessel: a microVM monitor in Go. See README.md.
#
#   make demo     install dependencies, build everything, boot a microVM
#   make test     all tests: unit, fuzz (short), end to end (real boots)
#   make fuzz     every fuzz target for a while (FUZZTIME=30s each; 1m by default)
#   make bench-boot  boot-time benchmark against gokvm and QEMU microvm
#   make bench-io    block, TCP and vsock throughput and exits per MiB
#   make bench-run   vessel run and docker run --runtime vessel against runc

SHELL := /bin/bash
GO ?= go
GUEST_DIR ?= $(or $(VESSEL_GUEST_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/vessel/guest)
APT_PACKAGES := qemu-system-x86 linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio lz4 dpkg-dev busybox-static e2fsprogs gcc libc6-dev libseccomp-dev pkg-config runc docker.io containerd podman conmon containernetworking-plugins iptables
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when the time runs
# out mid-execution (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 50000x

export VESSEL_GUEST_DIR := $(GUEST_DIR)

.PHONY: bench-compare all deps build guest demo test test-unit test-fuzz fuzz test-e2e crictl bench-boot bench-io bench-run clean

all: build guest

## deps: Debian packages (QEMU for the test platform, the kernel source and
## its build tools) and the Go modules.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) mod download

build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.gitVersion=$$(git describe --always --dirty 2>/dev/null)" -o bin/vessel ./cmd/vessel
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.gitVersion=$$(git describe --always --dirty 2>/dev/null)" -o bin/vessel-runtime ./cmd/vessel-runtime
	CGO_ENABLED=0 $(GO) build -o bin/vessel-vmm ./cmd/vessel-vmm
	CGO_ENABLED=0 $(GO) build -o bin/vessel-usernet ./cmd/vessel-usernet
	CGO_ENABLED=0 $(GO) build -o bin/vessel-share ./cmd/vessel-share
	CGO_ENABLED=0 $(GO) build -o bin/vessel-bench ./cmd/vessel-bench
	CGO_ENABLED=0 $(GO) build -o bin/vessel-workload ./bench/workload
	CGO_ENABLED=0 $(GO) build -o bin/testvm ./cmd/testvm

## guest: the guest kernel (built once, cached by its inputs) and the
## initramfs, installed where vessel looks for them by default.
guest:
	@mkdir -p build "$(GUEST_DIR)"
	@kdir=$$(images/build-kernel.sh) && \
		install -m 0644 "$$kdir/bzImage" "$(GUEST_DIR)/bzImage" && \
		install -m 0644 "$$kdir/vmlinux" "$(GUEST_DIR)/vmlinux"
	images/build-initramfs.sh "$(GUEST_DIR)/initramfs.cpio"

## demo: the README's first command: boot a microVM that prints its kernel
## version (through the nested test platform where the host's KVM cannot
## boot a stock kernel).
demo: deps build guest
	bin/testvm -- bin/vessel vm run -- uname -a

test: deps build guest test-unit test-fuzz test-e2e

test-unit:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	$(GO) test -race ./...
	CGO_ENABLED=0 $(GO) test ./internal/jail

# FUZZ_TARGETS lists every fuzz target as "./PKG FuzzName" lines, from
# the test files' source (asking `go test -list` would build every
# package's tests once more only to find the few that fuzz).
FUZZ_TARGETS = git grep -o '^func Fuzz[A-Za-z0-9_]*' -- '*_test.go' | sed 's|^\(.*\)/[^/]*:func |./\1 |'

## test-fuzz: a short bounded run of every fuzz target (FUZZTIME executions each).
test-fuzz:
	@mkdir -p build; set -e; targets=$$($(FUZZ_TARGETS)); [ -n "$$targets" ] || { echo "test-fuzz: no fuzz targets found"; exit 1; }; \
	while read -r pkg t; do \
		echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s $$pkg >build/fuzz.log 2>&1 </dev/null || { echo "fuzz $$t failed:"; tail -40 build/fuzz.log; exit 1; }; \
	done <<< "$$targets"

## fuzz: every fuzz target for FUZZTIME each, a duration given on the
## command line (make fuzz FUZZTIME=30s; 1m when not given: test-fuzz's
## count is not used). All targets run; a failing input is written to the
## package's testdata/fuzz/<target>, and the failures are listed at the end.
## A duration can make Go 1.26's coordinator fail a target with a bare
## "context deadline exceeded" at the end of its budget (golang/go#75804,
## fixed in Go 1.27): such a run, with no failing input written, counts as
## passed, and says so.
fuzz:
	@mkdir -p build; fuzztime=$(if $(filter command line environment,$(origin FUZZTIME)),$(FUZZTIME),1m); failed=; \
	targets=$$($(FUZZ_TARGETS)); [ -n "$$targets" ] || { echo "fuzz: no fuzz targets found"; exit 1; }; \
	while read -r pkg t; do \
		log=build/fuzz-$$(basename $$pkg)-$$t.log; \
		echo "fuzz $$pkg $$t ($$fuzztime)"; \
		if ! $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $$fuzztime -fuzzminimizetime 10s $$pkg >$$log 2>&1 </dev/null; then \
			if grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
				echo "fuzz $$t: passed (the run ended on golang/go#75804's spurious deadline error; no failing input)"; \
			else \
				echo "fuzz $$t failed:"; tail -40 $$log; failed="$$failed $$t"; \
			fi; \
		fi; \
	done <<< "$$targets"; \
	[ -z "$$failed" ] || { echo "fuzz: failed:$$failed (logs in build/fuzz-*.log)"; exit 1; }

## test-e2e: real boots. The test binary is compiled on the host and run
## inside the test platform (cmd/testvm): directly on a VT-x/AMD-V host,
## in a nested KVM under QEMU's emulation elsewhere. e2e/blocks lists the
## blocks, each run in an outer VM of its own, E2E_LANES at a time (0: as
## many as the host's CPUs and memory allow, at most three); each block's
## output goes to build/e2e-<block>.log, and a line shows as each starts
## and ends.
#
## Every block runs even when an earlier one failed; e2e/runblock ends a
## failed block's output with what its failed tests said, and runs a test
## that failed on one of the emulated platform's known faults once more,
## loudly (a RETRY line): only its failed subtests when each shows the
## fault; the whole block, when the outer kernel's crash ended it inside
## a test.
E2E_LANES ?= 0
test-e2e: build crictl
	CGO_ENABLED=0 $(GO) test -c -tags e2e -o build/e2e.test ./e2e
	@mkdir -p build/seccomptest
	CGO_ENABLED=0 $(GO) build -tags seccomptest -o build/seccomptest/vessel ./cmd/vessel
	CGO_ENABLED=0 $(GO) build -tags seccomptest -o build/seccomptest/vessel-vmm ./cmd/vessel-vmm
	CGO_ENABLED=0 $(GO) build -tags seccomptest -o build/seccomptest/vessel-usernet ./cmd/vessel-usernet
	CGO_ENABLED=0 $(GO) build -tags seccomptest -o build/seccomptest/vessel-share ./cmd/vessel-share
	@$(GO) build -o build/runblock ./e2e/runblock
	build/runblock -testvm bin/testvm -e2e build/e2e.test -plan e2e/blocks -lanes $(E2E_LANES) -logdir build

## crictl: cri-tools' CRI client (not in Debian 12), built into build/peers
## for TestCRI. A tool, not a dependency: it stays out of go.mod.
CRICTL_VERSION := v1.37.0
crictl: build/peers/crictl
build/peers/crictl:
	@mkdir -p build/peers
	GOBIN=$(CURDIR)/build/peers CGO_ENABLED=0 GOFLAGS=-mod=mod $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

clean:
	rm -rf bin build

## bench-boot: boot-time benchmark of vessel against gokvm and QEMU microvm
## (bench/boot): same kernel, initramfs and command line, interleaved runs,
## on the test platform (cmd/testvm). Not a test: no thresholds. The full
## output (progress, report) goes to stdout and build/bench-boot.md, the raw
## JSON to build/bench-boot.json (files written inside the test platform do
## not survive it, so the JSON travels in the report). BENCH_FLAGS adds
## benchboot flags (e.g. --runs 9).
GOKVM_VERSION := v0.0.8-0.20231003020000-f53faca69d28
BENCH_FLAGS ?=
bench-boot: build guest
	CGO_ENABLED=0 $(GO) build -o bin/benchboot ./bench/boot
	@mkdir -p build/peers
	GOBIN=$(CURDIR)/build/peers CGO_ENABLED=0 $(GO) install github.com/bobuhiro11/gokvm@$(GOKVM_VERSION)
	set -o pipefail; bin/testvm --timeout 40m -- bin/benchboot --gokvm build/peers/gokvm \
		--kernel "$(GUEST_DIR)/bzImage" --initrd "$(GUEST_DIR)/initramfs.cpio" $(BENCH_FLAGS) 2>&1 | tee build/bench-boot.md
	bin/benchboot --extract-json build/bench-boot.md --out build/bench-boot.json

## bench-compare: `vessel bench compare` (bench/compare): the same
## workloads on the host, in runc and in vessel, on the test platform
## (cmd/testvm) with every environment inside the same test VM, at the
## small sizes that suit its emulation. The run's log goes to
## build/bench-compare.log and its report (report.md, results.json,
## charts/) to build/bench-compare. BENCH_COMPARE_FLAGS replaces the
## flags (e.g. --sizes full --repeat 5).
BENCH_COMPARE_FLAGS ?= --sizes small --repeat 3
bench-compare: deps build guest
	@mkdir -p build
	set -o pipefail; bin/testvm --timeout 85m -- bin/vessel bench compare --print-json --out /tmp/vessel-bench-compare \
		$(BENCH_COMPARE_FLAGS) 2>&1 | tee build/bench-compare.log
	bin/vessel bench render --out build/bench-compare build/bench-compare.log

## bench-io: I/O benchmark (bench/io): block sequential and random, TCP
## over TAP and the user network, vsock, each inside a vessel guest and a
## QEMU microvm guest (same kernel, initramfs, command line and size, runs
## interleaved) against the same code on the host of the same platform,
## plus KVM exits and guest-counted interrupts per MiB for both VMMs and
## vessel's own userspace exits and notifies. Not a test: no thresholds.
## The report goes to stdout and build/bench-io.md. BENCH_IO_FLAGS adds
## benchio flags (e.g. -size-mib 256 -runs 5, -vmms vessel).
BENCH_IO_FLAGS ?=
bench-io: build guest
	CGO_ENABLED=0 $(GO) build -o bin/benchio ./bench/io
	@mkdir -p build
	set -o pipefail; bin/testvm --timeout 80m -- bin/benchio -vessel bin/vessel \
		-kernel "$(GUEST_DIR)/bzImage" -initrd "$(GUEST_DIR)/initramfs.cpio" $(BENCH_IO_FLAGS) 2>&1 | tee build/bench-io.md

## bench-run: container start-up benchmark (bench/run): `vessel run IMAGE
## true` end to end (from the template, booted cold, and with the default
## user network) against `vessel vm run -- true` and the host's runc running
## the same root file system; `docker run --runtime vessel` against
## `--runtime runc` on one dockerd; the memory of one running container
## under each; and density: 8 idle containers from one template against 8
## cold-booted, their PSS summed. Not a test: no thresholds. The report goes to stdout and build/bench-run.md.
## BENCH_RUN_FLAGS adds benchrun flags (e.g. -runs 9).
BENCH_RUN_FLAGS ?=
bench-run: deps build guest
	CGO_ENABLED=0 $(GO) build -o bin/benchrun ./bench/run
	@mkdir -p build
	set -o pipefail; bin/testvm --timeout 40m -- bin/benchrun -vessel bin/vessel -runtime bin/vessel-runtime -guest "$(GUEST_DIR)" $(BENCH_RUN_FLAGS) 2>&1 | tee build/bench-run.md
