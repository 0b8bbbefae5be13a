"""Loading a Linux kernel and entering it: the x86 boot protocol, the zero page, the vCPU's
first state."""
