"""When a built guest image must be built again."""

from pcivm.guest.manifest import MANIFEST_FORMAT, inputs_digest, is_stale, wanted_manifest

FILES = {"init.sh": b"#!/bin/sh\n", "legacy_stub.c": b"int x;\n"}


def wanted(**changes):
    fields = dict(
        kernel_package="linux-image-6.1.0-56-cloud-amd64",
        kernel_version="6.1.192-2",
        busybox_version="1:1.35.0-4+deb12u1+b1",
        inputs=inputs_digest(FILES, ("virtio_pci",)),
    )
    fields.update(changes)
    return wanted_manifest(**fields)


def test_nothing_built_is_stale():
    assert is_stale(None, wanted())


def test_same_versions_and_inputs_are_fresh():
    assert not is_stale(wanted(), wanted())


def test_a_new_kernel_version_is_stale():
    assert is_stale(wanted(), wanted(kernel_version="6.1.193-1"))


def test_a_new_kernel_package_is_stale():
    assert is_stale(wanted(), wanted(kernel_package="linux-image-6.1.0-57-cloud-amd64"))


def test_a_new_busybox_is_stale():
    assert is_stale(wanted(), wanted(busybox_version="1:1.36.1-1"))


def test_an_edited_input_file_is_stale():
    edited = inputs_digest({**FILES, "init.sh": b"#!/bin/sh\necho\n"}, ("virtio_pci",))
    assert is_stale(wanted(), wanted(inputs=edited))


def test_a_changed_module_list_is_stale():
    assert is_stale(wanted(), wanted(inputs=inputs_digest(FILES, ("virtio_pci", "virtio_blk"))))


def test_an_older_manifest_format_is_stale():
    assert is_stale({**wanted(), "format": MANIFEST_FORMAT - 1}, wanted())


def test_digest_does_not_depend_on_dict_order_but_on_names():
    assert inputs_digest(dict(reversed(FILES.items()))) == inputs_digest(FILES)
    renamed = {"init2.sh": FILES["init.sh"], "legacy_stub.c": FILES["legacy_stub.c"]}
    assert inputs_digest(renamed) != inputs_digest(FILES)
    # moving bytes from one file to the next must not collide
    assert inputs_digest({"a": b"xy", "b": b""}) != inputs_digest({"a": b"x", "b": b"y"})
