"""Bad input from a careless user: one line on stderr, exit status 1, no traceback."""

import pytest

from pcivm import cli
from pcivm.kvm import api
from tests.unit.test_boot_protocol import make_bzimage


def run(argv, capsys):
    status = cli.main(argv)
    err = capsys.readouterr().err
    return status, err


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    return path


def assert_one_line(err):
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_missing_kernel_names_the_file(tmp_path, capsys):
    status, err = run(["-kernel", str(tmp_path / "missing-kernel")], capsys)
    assert status == 1 and "missing-kernel" in err
    assert_one_line(err)


def test_unreadable_initrd_names_the_file(kernel, tmp_path, capsys):
    status, err = run(["-kernel", str(kernel), "-initrd", str(tmp_path / "no-initrd")], capsys)
    assert status == 1 and "no-initrd" in err
    assert_one_line(err)


def test_a_file_that_is_not_a_bzimage(tmp_path, capsys):
    path = tmp_path / "README"
    path.write_text("just text\n" * 100)
    status, err = run(["-kernel", str(path)], capsys)
    assert status == 1 and "not a bzImage" in err
    assert_one_line(err)


@pytest.mark.parametrize(
    "argv,needle",
    [(["-bogus"], "-bogus: invalid option"), (["-m", "x1", "-kernel", "k"], "-m")],
)
def test_bad_options(argv, needle, capsys):
    status, err = run(argv, capsys)
    assert status == 1 and needle in err
    assert_one_line(err)


def test_memory_too_small_for_the_kernel(kernel, capsys, monkeypatch, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(make_bzimage(init_size=100 << 20))
    status, err = run(["-m", "32", "-kernel", str(big)], capsys)
    assert status == 1 and "raise -m" in err
    assert_one_line(err)


def test_absent_dev_kvm_suggests_the_box(kernel, capsys, monkeypatch):
    monkeypatch.setattr(api, "KVM_DEVICE", "/nonexistent/kvm")
    status, err = run(["-kernel", str(kernel)], capsys)
    assert status == 1 and "/nonexistent/kvm" in err and "pcivm box" in err
    assert_one_line(err)


def test_dev_kvm_that_is_not_kvm(kernel, capsys, monkeypatch, tmp_path):
    node = tmp_path / "kvm"
    node.write_text("")
    monkeypatch.setattr(api, "KVM_DEVICE", str(node))
    status, err = run(["-kernel", str(kernel)], capsys)
    assert status == 1 and "is not a KVM device" in err and "pcivm box" in err
    assert_one_line(err)


def test_version_and_help(capsys):
    assert cli.main(["--version"]) == 0
    assert "pcivm" in capsys.readouterr().out
    assert cli.main(["-h"]) == 0
    assert "usage" in capsys.readouterr().out


def test_missing_disk_image_names_the_file(kernel, tmp_path, capsys):
    missing = tmp_path / "no-such-disk.img"
    status, err = run(["-kernel", str(kernel), "-drive", f"file={missing},if=virtio"], capsys)
    assert status == 1 and "no-such-disk.img" in err and "No such file" in err
    assert_one_line(err)


@pytest.mark.parametrize(
    "drive,needle",
    [
        ("if=virtio", "file=PATH"),
        ("file=x.img,if=ide", "if=ide is not supported"),
        ("file=x.img,format=qcow2", "format=qcow2 is not supported"),
        ("file=x.img,cache=fast", "cache=fast"),
        ("file=x.img,bogus=1", "Invalid parameter 'bogus'"),
    ],
)
def test_bad_drive_options(drive, needle, capsys):
    status, err = run(["-kernel", "k", "-drive", drive], capsys)
    assert status == 1 and needle in err
    assert_one_line(err)


def test_device_naming_a_missing_drive(capsys):
    status, err = run(["-kernel", "k", "-device", "virtio-blk-pci,drive=nope"], capsys)
    assert status == 1 and "can't find value 'nope'" in err
    assert_one_line(err)
