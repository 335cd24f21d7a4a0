# Two entry points for a fresh Debian 12 machine (as root): `make serve` and `make test`.
# Both install what they need first and are safe to run again.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# What the appliance runs on (`make serve`) ...
RUN_PACKAGES := qemu-system-x86 qemu-utils libnbd-bin python3-libnbd python3-venv nbdkit nbdkit-plugin-python \
  openssh-client sshfs fuse3 xfsprogs python3-libvirt dnsmasq-base iproute2
# ... and what the tests add (`make test`): servers to test against (sshd, libvirtd, a browser), the
# ISO's build tools, the tools the suite's guest and network tests use, and faketime (clock jumps).
TEST_PACKAGES := openssh-server debootstrap squashfs-tools xorriso grub-pc-bin grub-efi-amd64-bin grub-common mtools \
  dosfstools ovmf git binutils libvirt-daemon-system libvirt-daemon-system-sysv libvirt-daemon-driver-qemu \
  libvirt-clients netcat-openbsd iputils-ping chromium chromium-driver faketime
# The peers bench/peers.py runs Cairn against.
BENCH_PACKAGES := virtnbdbackup borgbackup restic
# A one-node Ceph, started by the tests of the RADOS and S3 stores and RBD restores (they skip without
# it; .ci/run installs it) and by bench/scale_out.py. Installing starts no daemon.
CEPH_PACKAGES := ceph-mon ceph-osd ceph-mgr radosgw ceph-common python3-rados python3-rbd qemu-block-extra
DATA_DIR ?= $(CURDIR)/data
PYTEST_ARGS ?=
# Tests run two at a time (pytest-xdist): much of a test's time waits on a guest, a server or a
# subprocess. Each test keeps its own names, namespaces, ports and data dirs, so two never meet
# (README, Tests). TEST_WORKERS=0 runs them one at a time.
TEST_WORKERS ?= 2

.PHONY: serve test test-fast lint deps test-deps ceph-deps venv test-venv bench iso clean

serve: venv
	CAIRN_DATA_DIR=$${CAIRN_DATA_DIR:-$(DATA_DIR)} $(VENV)/bin/cairn serve --host 127.0.0.1 --port 8080

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)

# The rules the code keeps (pyproject.toml): style and bugs (ruff), the architecture's import
# contracts (import-linter, see docs/architecture.md) and types (mypy).
lint: test-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The quick set while working: everything but the slowest end-to-end scenarios.
test-fast: test-venv
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

bench: test-venv ceph-deps
	@$(call apt_install,$(BENCH_PACKAGES))
	$(PY) bench/startup.py
	$(PY) bench/api.py
	$(PY) bench/vm_create.py
	$(PY) bench/backup_throughput.py
	$(PY) bench/store.py
	$(PY) bench/peers.py
	$(PY) bench/snapshot.py
	$(PY) bench/scale_out.py

# The installer ISO: build/iso/cairn-<version>.iso with its .sha256 and .manifest (root, ~2-4 min).
iso: test-venv
	iso/build.sh $(CURDIR)/build/iso

deps:
	@$(call apt_install,$(RUN_PACKAGES))

ceph-deps: deps
	@$(call apt_install,$(CEPH_PACKAGES))

test-deps: deps
	@$(call apt_install,$(TEST_PACKAGES))
	@# the test guest is fetched with `apt-get download`: the package lists must exist
	@ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq

# Installs the packages not there yet (dpkg -s fails if any is missing).
define apt_install
if ! dpkg -s $(1) >/dev/null 2>&1; then \
  export DEBIAN_FRONTEND=noninteractive; \
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(1); \
fi
endef

venv: deps $(VENV)/.installed
test-venv: test-deps $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
