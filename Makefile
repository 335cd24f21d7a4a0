# Two entry points for a fresh Debian 12 machine (as root): `make serve` and `make test`.
# Both install what they need first and are safe to run again.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qemu-system-x86 qemu-utils libnbd-bin python3-libnbd python3-venv nbdkit openssh-server openssh-client \
  debootstrap squashfs-tools xorriso grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools ovmf git \
  sshfs binutils nbdkit-plugin-python fuse3 xfsprogs \
  libvirt-daemon-system libvirt-daemon-system-sysv libvirt-daemon-driver-qemu libvirt-clients python3-libvirt netcat-openbsd \
  dnsmasq-base iproute2 iputils-ping \
  chromium chromium-driver
DATA_DIR ?= $(CURDIR)/data
PYTEST_ARGS ?=

.PHONY: serve test test-fast deps venv bench iso clean

serve: venv
	CAIRN_DATA_DIR=$${CAIRN_DATA_DIR:-$(DATA_DIR)} $(VENV)/bin/cairn serve --host 127.0.0.1 --port 8080

test: venv
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The quick set while working: everything but the slowest end-to-end scenarios.
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/backup_throughput.py
	$(PY) bench/store.py
	$(PY) bench/snapshot.py

# The installer ISO: build/iso/cairn-<version>.iso with its .sha256 and .manifest (root, ~2-4 min).
iso: venv
	iso/build.sh $(CURDIR)/build/iso

deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@# the test guest is fetched with `apt-get download`: the package lists must exist
	@ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq

venv: deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
