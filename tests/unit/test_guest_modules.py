"""Module load order from modules.dep."""

import pytest

from pcivm.guest.modules import load_order, module_name, parse_modules_dep

V = "kernel/drivers/virtio"
MODULES_DEP = f"""\
{V}/virtio_pci.ko: {V}/virtio_pci_modern_dev.ko {V}/virtio_pci_legacy_dev.ko \
{V}/virtio.ko {V}/virtio_ring.ko
{V}/virtio.ko: {V}/virtio_ring.ko
{V}/virtio_ring.ko:
{V}/virtio_pci_modern_dev.ko:
{V}/virtio_pci_legacy_dev.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: {V}/virtio.ko {V}/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko {V}/virtio.ko {V}/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
"""


def test_module_names_use_underscores_and_drop_compression_suffixes():
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("kernel/fs/x/foo-bar.ko.xz") == "foo_bar"


def test_parse_keeps_paths_and_dependencies():
    graph = parse_modules_dep(MODULES_DEP)
    assert graph["virtio_rng"].path == "kernel/drivers/char/hw_random/virtio-rng.ko"
    assert graph["net_failover"].depends == ("failover",)
    assert graph["virtio_ring"].depends == ()


def test_every_module_comes_after_its_dependencies():
    graph = parse_modules_dep(MODULES_DEP)
    order = load_order(graph, ["virtio_pci", "virtio_net", "virtio_rng"])
    assert sorted(order) == sorted(set(order))  # no duplicates
    for name in order:
        for dep in graph[name].depends:
            assert order.index(dep) < order.index(name), (dep, name)
    assert set(order) == set(graph)


def test_only_what_is_needed_is_loaded():
    order = load_order(parse_modules_dep(MODULES_DEP), ["virtio_rng"])
    assert order == ["virtio_ring", "virtio", "virtio_rng"]


def test_unknown_module_is_an_error():
    with pytest.raises(KeyError, match="virtio_gpu"):
        load_order(parse_modules_dep(MODULES_DEP), ["virtio_gpu"])


def test_cycle_is_an_error():
    graph = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ValueError, match="cycle"):
        load_order(graph, ["a"])
