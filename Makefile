# The two entry points the README promises on a fresh Debian 12 machine (as root):
#   make demo   builds the guest image and boots it under pcivm and under QEMU, side by side
#   make test   runs the unit tests and the end-to-end tests (through `pcivm box` where needed)
# Each installs what it needs first: Debian packages once per checkout, then the venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# qemu-system-x86: the box (TCG with emulated SVM) and the reference VMM; qemu-utils: images;
# gcc, make: the old guest's virtio_pci.ko; xz-utils: linux-source; kmod: depmod/modinfo;
# lz4: unpacks the kernel for the ELF vmlinux; busybox-static: unit tests of the guest /init;
# python3-venv: the project's venv; acpica-tools: iasl cross-checks the ACPI tables.
DEBIAN_PACKAGES := qemu-system-x86 qemu-utils gcc make xz-utils lz4 kmod cpio busybox-static python3-venv \
	acpica-tools

.PHONY: all deps venv test unit e2e demo lint clean

all: test

.stamp-apt:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES)
	touch $@

deps: .stamp-apt

$(BIN)/pcivm: pyproject.toml | .stamp-apt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/pcivm

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: venv lint
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q tests/unit

e2e: venv
	$(BIN)/pytest -q tests/e2e

demo: venv
	$(BIN)/python -m pcivm.demo

clean:
	rm -rf $(VENV) .stamp-apt .pytest_cache .ruff_cache
