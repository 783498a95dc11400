// Linux's exported uapi <xen/privcmd.h> includes <xen/interface/xen.h>, the kernel's private copy
// of Xen's public xen.h, which headers_install does not export. Xen's own public header (from
// libxen-dev) defines the same domid_t and xen_pfn_t. Only native/src/xen_abi.cc includes
// <xen/privcmd.h>, and only when the Xen headers are installed.
#pragma once
#include <xen/xen.h>
