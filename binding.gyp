{
  "variables": {
    # MDEVKIT_SANITIZE=1 builds the addon with ASan + UBSan (see native/sanitize.sh).
    "mdevkit_sanitize%": "<!(echo ${MDEVKIT_SANITIZE:-0})",
    # 1 when native/bench/ is there (the repository): the bench executables are built then.
    "mdevkit_bench%": "<!(test -d native/bench && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "mdevkit_native",
      # native/src/core/: the parts a peer or guest controls, free of N-API (native/fuzz/ fuzzes them).
      "sources": [
        "native/src/addon.cc",
        "native/src/errors.cc",
        "native/src/fd_ops.cc",
        "native/src/mmap.cc",
        "native/src/unix_socket.cc",
        "native/src/ioctl.cc",
        "native/src/fd_watcher.cc",
        "native/src/dirty_bitmap.cc",
        "native/src/masked_storage.cc",
        "native/src/region_table.cc",
        "native/src/vfio_user_conn.cc",
        "native/src/vfio_abi.cc",
        "native/src/ioreq_engine.cc",
        "native/src/xen_abi.cc",
        "native/src/poll.cc",
        "native/src/page_scan.cc",
        "native/src/core/dirty_bitmap_core.cc",
        "native/src/core/ioreq.cc",
        "native/src/core/masked_storage.cc",
        "native/src/core/region_map.cc",
        "native/src/core/vfio_user_stream.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/src",
        # Only for Linux's uapi <xen/privcmd.h> in xen_abi.cc (see native/compat/xen/interface/xen.h).
        "native/compat"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        # A native call that fails while its worker is being terminated (worker.terminate()
        # during a blocking call) cannot throw into JS: without this, node-addon-api rethrows
        # that failure as a C++ exception and the whole process ends in std::terminate.
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "_GNU_SOURCE"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y"],
      "cflags_cc": [
        "-std=c++17",
        "-fexceptions",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers"
      ],
      "conditions": [
        ["mdevkit_sanitize==1", {
          "cflags_cc": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-O1", "-g"],
          "ldflags": ["-fsanitize=address,undefined"]
        }]
      ]
    }
  ],
  "conditions": [
    # The C floor of `npm run bench` is built only where its sources are: in the repository, not in
    # an installed package (the tarball ships no benchmarks).
    ["mdevkit_bench==1", {
      "targets": [
        {
          "target_name": "mdevkit-echo-floor",
          "type": "executable",
          "sources": ["native/bench/echo-floor.c"],
          "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
        },
        {
          "target_name": "mdevkit-rtt-client",
          "type": "executable",
          "sources": ["native/bench/rtt-client.c"],
          "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
        }
      ]
    }]
  ]
}
