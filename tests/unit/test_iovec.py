"""IoVec: transfers between a file and guest RAM by host address, and its parts."""

import errno
import os

import pytest

from pcivm.iovec import IOV_MAX, IoVec
from pcivm.memory import GuestMemory, MiB
from pcivm.virtio.blk import _transfer


@pytest.fixture
def memory():
    memory = GuestMemory(8 * MiB)
    yield memory
    memory.close()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def test_a_read_scatters_the_file_into_each_range_and_nothing_else(memory, data_file):
    memory.write(0x10000, b"\xee" * 0x3000)
    iov = memory.iovec([0x10010, 0x12000], [100, 28])
    assert iov.preadv(data_file, 3) == 128
    expected = bytes(range(256)) * 64
    assert memory.read(0x10010, 100) == expected[3:103]
    assert memory.read(0x12000, 28) == expected[103:131]
    # The bytes around each range are untouched.
    assert memory.read(0x10000, 0x10) == b"\xee" * 0x10
    assert memory.read(0x10010 + 100, 0x1000) == b"\xee" * 0x1000
    assert memory.read(0x12000 + 28, 0x100) == b"\xee" * 0x100


def test_a_write_gathers_the_ranges_in_order(memory, data_file):
    memory.write(0x20000, b"head")
    memory.write(0x30000, b"tail")
    iov = memory.iovec([0x20000, 0x30000], [4, 4])
    assert iov.pwritev(data_file, 10) == 8
    assert os.pread(data_file, 8, 10) == b"headtail"


def test_parts_cut_ranges_from_both_ends(memory):
    for iov in (
        memory.iovec([0x1000, 0x2000, 0x3000], [16, 32, 8]),  # views
        memory.iovec([0x1000 * (i + 1) for i in range(10)], [16, 32, 8] + [4] * 7),  # addresses
    ):
        part = iov.trimmed(20, 30)  # 4 bytes into the second range, up to 2 into the third
        assert list(zip(part.bases, part.lengths, strict=True)) == [
            (memory.host_addr + 0x2004, 28),
            (memory.host_addr + 0x3000, 2),
        ]
        assert part.nbytes == 30
        assert [bytes(v) for v in part.views()] == [bytes(28), bytes(2)]
        assert iov.trimmed(0) is iov
        assert len(iov.after(iov.nbytes)) == 0 and len(iov.trimmed(10, 0)) == 0
        assert iov.after(48).lengths[0] == 8 and iov.after(48).nbytes == iov.nbytes - 48
        assert iov.bases[:3] == [memory.host_addr + a for a in (0x1000, 0x2000, 0x3000)]


def test_a_part_asked_for_again_is_the_part_made_before(memory):
    pages = [0x10000 + 0x2000 * i for i in range(12)]
    for iov in (
        memory.iovec([0x1000, 0x2000, 0x3000], [16, 32, 8]),  # views: made each time
        memory.iovec(pages, [4096] * 11 + [1]),  # addresses: a blk read's data and status
    ):
        data = iov.trimmed(0, iov.nbytes - 1)
        assert (iov.trimmed(0, iov.nbytes - 1) is data) == (len(iov) > 3)
        other = iov.trimmed(3, 20)
        assert (other.nbytes, sum(other.lengths)) == (20, 20)
        again = iov.trimmed(0, iov.nbytes - 1)  # the other part in between: made anew
        assert list(zip(again.bases, again.lengths, strict=True)) == list(
            zip(data.bases, data.lengths, strict=True)
        )
        assert again.nbytes == iov.nbytes - 1


def test_split_cuts_at_any_byte_and_the_parts_hold_the_same_ranges(memory):
    def merged(iovs):
        out = []
        for iov in iovs:
            for base, length in zip(iov.bases, iov.lengths, strict=True):
                assert length > 0  # no empty range on either side of a cut
                if out and out[-1][0] + out[-1][1] == base:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((base, length))
        return out

    pages = [0x10000 + 0x2000 * i for i in range(12)]
    for iov, step in (
        (memory.iovec([0x1000, 0x3000, 0x5000], [16, 32, 8]), 1),  # views
        (memory.iovec([0x2000 * (i + 1) for i in range(10)], [16, 32, 8] + [4] * 7), 1),
        # Pages (cut at a page: the ranges as they are), and ranges whose page count is
        # not their index.
        (memory.iovec(pages, [4096] * 12), 512),
        (memory.iovec(pages, [8192, 4096, 512, 3584] + [4096] * 8), 256),
    ):
        whole = merged([iov])
        for at in range(step, iov.nbytes, step):
            front, back = iov.split(at)
            assert (front.nbytes, back.nbytes) == (at, iov.nbytes - at)
            assert sum(front.lengths) == at and sum(back.lengths) == iov.nbytes - at
            assert merged([front, back]) == whole
        for at in (0, iov.nbytes):
            with pytest.raises(ValueError):
                iov.split(at)
    # At a range boundary nothing is cut; inside a range it becomes two.
    iov = memory.iovec([0x2000 * (i + 1) for i in range(10)], [100] * 10)
    front, back = iov.split(300)
    assert (len(front), len(back)) == (3, 7)
    front, back = iov.split(350)
    assert (len(front), len(back)) == (4, 7)
    assert front.bases[-1] + 50 == back.bases[0] == memory.host_addr + 0x8000 + 50


def test_a_range_past_either_end_is_an_index_error_in_both_forms(memory):
    for iov in (
        memory.iovec([0x1000, 0x3000], [16, 32]),  # views
        memory.iovec([0x2000 * (i + 1) for i in range(10)], [16] * 10),  # addresses
    ):
        assert len(iov.view(-1)) == iov.lengths[-1]
        for index in (len(iov), -len(iov) - 1):
            with pytest.raises(IndexError):
                iov.view(index)
        empty = iov.trimmed(0, 0)
        with pytest.raises(IndexError):
            empty.view(-1)
    array_form = memory.iovec([0x2000 * (i + 1) for i in range(10)], [16] * 10)
    with pytest.raises(IndexError):
        IoVec.of_vector(b"", 0, array_form._ram, array_form._origin).view(-1)


def test_alignment_looks_at_every_start_and_length(memory):
    assert memory.iovec([0x1000, 0x3000], [0x1000, 0x200]).aligned(512)
    assert not memory.iovec([0x1000, 0x3000], [0x1000, 0x100]).aligned(512)
    assert not memory.iovec([0x1000, 0x3100], [0x1000, 0x200]).aligned(512)


def test_more_ranges_than_one_call_takes_are_done_in_several(memory, data_file):
    count = IOV_MAX + 3
    iov = memory.iovec([0x100000 + 16 * i for i in range(count)], [8] * count)
    assert iov.preadv(data_file, 0) == 8 * IOV_MAX  # the kernel's limit: one call, the first
    done = _transfer(type(iov).preadv, data_file, iov, 0)
    assert done == 8 * count
    file = bytes(range(256)) * 64
    assert memory.read(0x100000 + 16 * (count - 1), 8) == file[8 * (count - 1) : 8 * count]
    # The same as views (what a chain walked one by one gives).
    views = IoVec([8] * count, 8 * count, [memoryview(bytearray(8)) for _ in range(count)])
    assert views.preadv(data_file, 0) == 8 * IOV_MAX
    assert _transfer(IoVec.preadv, data_file, views, 0) == 8 * count
    assert bytes(views.view(-1)) == file[8 * (count - 1) : 8 * count]


def test_errors_are_the_oserrors_os_preadv_raises(memory, tmp_path):
    iov = memory.iovec([0x1000], [16])
    with pytest.raises(OSError) as raised:
        iov.preadv(-1, 0)
    assert raised.value.errno == errno.EBADF
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(IsADirectoryError):
            iov.preadv(directory, 0)
    finally:
        os.close(directory)


def test_an_iovec_keeps_guest_ram_mapped_until_it_is_gone(data_file):
    memory = GuestMemory(8 * MiB)
    iov = memory.iovec([0x1000], [16])
    memory.close()  # the pages are released, the mapping stays while the IoVec lives
    assert iov.preadv(data_file, 0) == 16
    assert bytes(iov.view(0)) == bytes(range(16))
