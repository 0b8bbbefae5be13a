#!/bin/busybox sh
# /init of the pcivm guest image (docs/guest.md).
#
# Kernel command line words it reads:
#   pcivm.guest=legacy   load the legacy-only build of virtio_pci (the old guest)
#   pcivm.run=CMD        run CMD between ===PCIVM-RUN-BEGIN=== and
#                        ===PCIVM-RUN-EXIT=<status>=== (before the probe report)
#   pcivm.probe=1        print the probe report (docs/probe-report.md)
#   MODULE.param=value   passed to insmod of MODULE
# With pcivm.run or pcivm.probe the machine powers off afterwards; otherwise a shell
# runs on the console.

/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The kernel does not mount devtmpfs on an initramfs by itself (DEVTMPFS_MOUNT is off).
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

. /lib/pcivm/functions.sh

probe=
cmdline_flag pcivm.probe && probe=1
run_cmd=
has_run=
if run_cmd=$(cmdline_value pcivm.run); then has_run=1; fi
guest=modern
[ "$(cmdline_value pcivm.guest)" = legacy ] && guest=legacy

# Load the virtio drivers in dependency order (lists made at image build time). The old
# guest's list names the legacy-only virtio_pci in place of the stock one.
failed=
while read -r name path; do
	params=$(module_params "$name")
	set -f
	old_ifs=$IFS
	IFS='
'
	# shellcheck disable=SC2086 # one argument per line of $params
	if ! err=$(insmod "$path" $params 2>&1); then
		failed="$failed $name"
		[ -n "$probe" ] || echo "pcivm-init: insmod $name: $err"
	fi
	IFS=$old_ifs
	set +f
done </lib/pcivm/modules.$guest

finish() {
	sync
	poweroff -f
}

if [ -n "$has_run" ]; then
	echo "===PCIVM-RUN-BEGIN==="
	sh -c "$run_cmd"
	echo "===PCIVM-RUN-EXIT=$?==="
fi

if [ -n "$probe" ]; then
	# Kernel messages at the console from here on would land between the marker lines.
	echo 1 >/proc/sys/kernel/printk
	dmesg >/tmp/kmsg
	probe_json "$(uname -r)" "$guest" /tmp/kmsg "${failed# }"
fi

[ -n "$has_run$probe" ] && finish

echo "pcivm guest ($guest): 'poweroff -f' stops the machine"
while true; do
	# A session of its own with the console as controlling terminal, for job control.
	setsid cttyhack sh -l
done
