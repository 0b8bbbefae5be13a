#!/bin/sh
# blkbench DEVICE SEQ_MIB THREADS SECONDS: the guest side of bench/blk.py.
#
# 1. sequential: dd reads SEQ_MIB blocks of 1 MiB with O_DIRECT (iflag=direct);
# 2. random: randread, THREADS threads each with one 4 KiB O_DIRECT read in flight,
#    for SECONDS seconds.
# Each test is bracketed by short marker lines (=S0= =S1=, =R0= =R1=) at which the host
# side samples KVM's counters of the VM; nothing else is printed between them (every
# console byte is an exit). The block layer's counters (/sys/block/DEV/stat: reads
# completed, merged, sectors, ...) are printed before and after each test.
dev=${1:-/dev/vda}
mib=${2:-1024}
threads=${3:-4}
seconds=${4:-10}
stat=/sys/block/${dev#/dev/}/stat

blkstat() { echo "BLK-STAT $1 $(cat "$stat")"; }

# the request limits the guest's block layer derived from the device
queue=/sys/block/${dev#/dev/}/queue
limits=
for name in max_sectors_kb max_hw_sectors_kb max_segments max_segment_size; do
	limits="$limits $name=$(cat "$queue/$name" 2>/dev/null)"
done
echo "BLK-QUEUE$limits"

blkstat seq0
echo =S0=
dd if="$dev" of=/dev/null bs=1M count="$mib" iflag=direct 2>/tmp/dd.out
status=$?
echo =S1=
blkstat seq1
echo "BLK-DD $status $(grep 'records out' /tmp/dd.out)"

blkstat rand0
echo =R0=
randread "$dev" "$threads" "$seconds" >/tmp/rr.out 2>&1
status=$?
echo =R1=
blkstat rand1
echo "BLK-RR $status $(tail -n 1 /tmp/rr.out)"
