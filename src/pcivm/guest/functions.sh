# Shell functions of the guest's /init (busybox sh and awk), kept in their own file so
# that the host's tests can run them against a made-up command line and sysfs.
#
# The roots are variables for the same reason; in the guest they are the real ones.
PCIVM_CMDLINE=${PCIVM_CMDLINE:-/proc/cmdline}
PCIVM_SYS=${PCIVM_SYS:-/sys}
PCIVM_PROC=${PCIVM_PROC:-/proc}

# The words of the kernel command line, one a line, with quotes removed.
# The kernel itself honours only double quotes, but a user who writes
# pcivm.run='echo $((6*7))' means one word; /proc/cmdline keeps the raw text, so the
# words are split here the way sh would: '...' and "..." may appear anywhere in a word.
cmdline_words() {
	awk -v sq="'" '
	{ text = text (NR > 1 ? " " : "") $0 }
	END {
		n = length(text); word = ""; inword = 0; quote = ""
		for (i = 1; i <= n; i++) {
			c = substr(text, i, 1)
			if (quote != "") {
				if (c == quote) quote = ""; else word = word c
				continue
			}
			if (c == "\"" || c == sq) { quote = c; inword = 1; continue }
			if (c == " " || c == "\t") {
				if (inword) print word
				word = ""; inword = 0
				continue
			}
			word = word c; inword = 1
		}
		if (inword) print word
	}' "$PCIVM_CMDLINE"
}

# cmdline_value KEY: the value of the last KEY=value word ("" for a bare KEY);
# status 1 when KEY is absent.
cmdline_value() {
	cmdline_words | awk -v key="$1" '
	index($0, key "=") == 1 { value = substr($0, length(key) + 2); found = 1 }
	$0 == key { value = ""; found = 1 }
	END { if (!found) exit 1; print value }'
}

# cmdline_flag KEY: status 0 when KEY is on (a bare KEY, or KEY=1/y/yes/on/true).
cmdline_flag() {
	case "$(cmdline_value "$1")" in
	"" | 1 | y | Y | yes | on | true) cmdline_value "$1" >/dev/null ;;
	*) return 1 ;;
	esac
}

# module_params MODULE: the MODULE.param=value words of the command line as insmod
# arguments, one a line (busybox insmod does not read /proc/cmdline itself).
# Like the kernel, '-' and '_' are the same in a module name. A value with a space is
# double-quoted again, because the kernel's module parameter parser splits at spaces.
module_params() {
	cmdline_words | awk -v module="$1" '
	function norm(s) { gsub(/-/, "_", s); return s }
	{
		dot = index($0, ".")
		eq = index($0, "=")
		if (dot < 2 || (eq && eq < dot)) next
		if (norm(substr($0, 1, dot - 1)) != norm(module)) next
		param = substr($0, dot + 1)
		if (param == "") next
		eq = index(param, "=")
		if (eq && index(param, " ")) param = substr(param, 1, eq) "\"" substr(param, eq + 1) "\""
		print param
	}'
}

# driver_of DIR: the name of the driver a sysfs device is bound to (nothing if none).
driver_of() {
	if [ -L "$1/driver" ]; then
		link=$(readlink "$1/driver")
		echo "${link##*/}"
	fi
}

# probe_records: one tab-separated line per device for probe_json, holding what awk
# cannot find by itself (directory listings and symlink targets):
#   pci <bdf> <driver>      virtio <name> <driver> <parent device>
probe_records() {
	for dev in "$PCIVM_SYS"/bus/pci/devices/*; do
		[ -e "$dev" ] || continue
		printf 'pci\t%s\t%s\n' "${dev##*/}" "$(driver_of "$dev")"
	done
	for dev in "$PCIVM_SYS"/bus/virtio/devices/*; do
		[ -e "$dev" ] || continue
		parent=$(readlink -f "$dev")
		parent=${parent%/*}
		printf 'virtio\t%s\t%s\t%s\n' "${dev##*/}" "$(driver_of "$dev")" "${parent##*/}"
	done
}

# probe_json KERNEL GUEST KMSG_FILE FAILED_MODULES: the probe report, one JSON object on
# one line between the marker lines (docs/probe-report.md). Compact on purpose: every
# character on the serial line costs time.
probe_json() {
	probe_records | awk -F '\t' -v sys="$PCIVM_SYS" -v proc="$PCIVM_PROC" \
		-v cmdline_file="$PCIVM_CMDLINE" -v kernel="$1" -v guest="$2" \
		-v kmsg_file="$3" -v failed="$4" '
	BEGIN {
		for (i = 1; i < 32; i++) esc[sprintf("%c", i)] = sprintf("\\u%04x", i)
		esc["\""] = "\\\""; esc["\\"] = "\\\\"
		esc["\n"] = "\\n"; esc["\r"] = "\\r"; esc["\t"] = "\\t"
		for (i = 0; i < 16; i++) hexval[substr("0123456789abcdef", i + 1, 1)] = i
		# Debian busybox awk has no "^" (no libm): powers of two by doubling.
		pow2[0] = 1
		for (i = 1; i < 64; i++) pow2[i] = pow2[i - 1] * 2
		npci = 0; nvirtio = 0
	}
	function jstr(s,   out, i, n, c) {
		out = ""; n = length(s)
		for (i = 1; i <= n; i++) {
			c = substr(s, i, 1)
			out = out ((c in esc) ? esc[c] : c)
		}
		return "\"" out "\""
	}
	function jstr_or_null(s) { return s == "" ? "null" : jstr(s) }
	function readfile(path,   line, out, n) {
		out = ""; n = 0
		while ((getline line < path) > 0) out = (n++ ? out "\n" : "") line
		close(path)
		return out
	}
	function hex2num(s,   n, i, len) {
		s = tolower(s); sub(/^0x/, "", s)
		n = 0; len = length(s)
		for (i = 1; i <= len; i++) n = n * 16 + hexval[substr(s, i, 1)]
		return n
	}
	# Exact for every address below 2^53, which covers x86 physical addresses.
	function num2hex(n,   out, d) {
		if (n == 0) return "0x0"
		out = ""
		while (n > 0) { d = n % 16; out = substr("0123456789abcdef", d + 1, 1) out; n = (n - d) / 16 }
		return "0x" out
	}
	function bit(n, b) { return int(n / pow2[b]) % 2 }
	# The resources of a PCI device from its sysfs "resource" file: one line per
	# resource (BARs 0-5, ROM 6, SR-IOV 7-12, bridge windows 13-16), "start end flags".
	function bars(dir,   path, line, idx, f, start, end, flags, out, n) {
		path = dir "/resource"; idx = 0; out = ""; n = 0
		while ((getline line < path) > 0) {
			split(line, f, " ")
			start = hex2num(f[1]); end = hex2num(f[2]); flags = hex2num(f[3])
			# IORESOURCE_IO 0x100, IORESOURCE_MEM 0x200; IORESOURCE_DISABLED 0x10000000
			# and IORESOURCE_UNSET 0x20000000 mark resources without an address.
			if ((bit(flags, 8) || bit(flags, 9)) && !bit(flags, 28) && !bit(flags, 29) \
			    && end >= start && (start || end)) {
				out = out (n++ ? "," : "") "{\"index\":" idx ",\"start\":" jstr(num2hex(start)) \
					",\"size\":" jstr(num2hex(end - start + 1)) \
					",\"type\":" (bit(flags, 8) ? "\"io\"" : "\"mem\"") \
					",\"prefetch\":" (bit(flags, 13) ? "true" : "false") \
					",\"mem64\":" (bit(flags, 20) ? "true" : "false") "}"
			}
			idx++
		}
		close(path)
		return "[" out "]"
	}
	function pci_entry(bdf, driver,   dir) {
		dir = sys "/bus/pci/devices/" bdf
		return "{\"bdf\":" jstr(bdf) \
			",\"vendor\":" jstr(readfile(dir "/vendor")) \
			",\"device\":" jstr(readfile(dir "/device")) \
			",\"subsystem_vendor\":" jstr(readfile(dir "/subsystem_vendor")) \
			",\"subsystem_device\":" jstr(readfile(dir "/subsystem_device")) \
			",\"revision\":" jstr(readfile(dir "/revision")) \
			",\"class\":" jstr(readfile(dir "/class")) \
			",\"driver\":" jstr_or_null(driver) \
			",\"bars\":" bars(dir) "}"
	}
	function virtio_entry(name, driver, parent,   dir, features, iface, bdf) {
		dir = sys "/bus/virtio/devices/" name
		features = readfile(dir "/features")
		# The features file is a string of 0/1 digits, bit 0 first; VIRTIO_F_VERSION_1
		# (bit 32) is negotiated only over the modern interface. Without a driver no
		# feature was negotiated and the interface is unknown.
		iface = driver == "" ? "" : (substr(features, 33, 1) == "1" ? "modern" : "legacy")
		bdf = parent ~ /^[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]\.[0-7]$/ ? parent : ""
		return "{\"name\":" jstr(name) \
			",\"device_id\":" jstr(readfile(dir "/device")) \
			",\"driver\":" jstr_or_null(driver) \
			",\"features\":" jstr(features) \
			",\"pci_bdf\":" jstr_or_null(bdf) \
			",\"interface\":" jstr_or_null(iface) "}"
	}
	# Kernel log lines about PCI resources and virtio, without their timestamps.
	function kmsg(path,   line, out, n) {
		out = ""; n = 0
		while ((getline line < path) > 0) {
			sub(/^\[ *[0-9]+\.[0-9]+\] /, "", line)
			if (line ~ /BAR|bridge window|resource|assign|no space|MSI|MMCONFIG|ECAM/ \
			    || tolower(line) ~ /virtio|probe.*fail|failed with error/)
				out = out (n++ ? "," : "") jstr(line)
		}
		close(path)
		return "[" out "]"
	}
	$1 == "pci" { pci[++npci] = pci_entry($2, $3) }
	$1 == "virtio" { virtio[++nvirtio] = virtio_entry($2, $3, $4) }
	END {
		out = "{\"kernel\":" jstr(kernel) ",\"cmdline\":" jstr(readfile(cmdline_file)) \
			",\"guest\":" jstr(guest) ",\"pci\":["
		for (i = 1; i <= npci; i++) out = out (i > 1 ? "," : "") pci[i]
		out = out "],\"virtio\":["
		for (i = 1; i <= nvirtio; i++) out = out (i > 1 ? "," : "") virtio[i]
		out = out "],\"insmod_failed\":["
		nfailed = split(failed, names, " ")
		for (i = 1; i <= nfailed; i++) out = out (i > 1 ? "," : "") jstr(names[i])
		split(readfile(proc "/uptime"), up, " ")
		out = out "],\"ioports\":" jstr(readfile(proc "/ioports")) \
			",\"iomem\":" jstr(readfile(proc "/iomem")) \
			",\"kmsg\":" kmsg(kmsg_file) ",\"uptime\":" (up[1] == "" ? "null" : up[1]) "}"
		# One write, so that nothing lands inside the report.
		printf "===PCIVM-PROBE-BEGIN===\n%s\n===PCIVM-PROBE-END===\n", out
	}'
}
