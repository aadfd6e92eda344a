"""TVM RPC server that runs *inside* the emulated board (copied to /opt/mntvm by mntvm.remote.board).

Standalone: it imports only the board's own Python and TVM runtime, never ``mntvm``.

TVM's stock ``python -m tvm.exec.rpc_server`` starts the server through a ``PopenWorker``, which
re-executes ``sys.executable`` in a child; under qemu-user without binfmt_misc that exec fails
("Exec format error": the child is an aarch64 ELF run directly by the x86 kernel).  This script
serves in-process instead, reusing TVM's own machinery:

- it binds the listening socket itself (127.0.0.1, first free port of a range) and prints
  ``MNTVM_BOARD_LISTENING <port>`` so the host knows the port;
- it runs ``tvm.rpc.server._listen_loop`` in the main thread: that registers with the tracker
  (UPDATE_INFO then PUT of ``key`` with a random match key), renews the match key, accepts
  clients whose match key fits, and hands each session to ``_serving``, which *forks*
  (``multiprocessing`` "fork" start method: no exec) a child running ``_ffi_api.ServerLoop``;
- before that it registers ``mntvm.board.arch`` (returns ``platform.machine()``),
  ``mntvm.board.cores`` (the cores it may run on) and ``mntvm.profile_vm`` (``vm_profile.py``, copied beside this script), which forked session
  children inherit, so the host can ask which architecture it talks to and time each kernel.
"""
import argparse
import errno
import logging
import multiprocessing
import os
import platform
import socket
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracker", required=True, help="HOST:PORT of the RPC tracker")
    parser.add_argument("--key", required=True, help="RPC key to register under")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, default=9190)
    args = parser.parse_args(argv)
    thost, tport = args.tracker.rsplit(":", 1)
    tracker_addr = (thost, int(tport))

    # Sessions are served in forked children; never spawn/forkserver (they exec python).
    multiprocessing.set_start_method("fork", force=True)

    import tvm  # noqa: F401  (loads the runtime library; TVM_USE_RUNTIME_LIB=1 set by the host)
    import tvm_ffi
    from tvm.rpc import server as rpc_server

    @tvm_ffi.register_global_func("mntvm.board.arch", override=True)
    def _arch():
        return platform.machine()

    @tvm_ffi.register_global_func("mntvm.board.cores", override=True)
    def _cores():  # the cores this process may run on (its affinity: qemu-user passes the host's)
        return len(os.sched_getaffinity(0))

    import vm_profile  # next to this script: per-kernel timing for `mntvm bench --per-layer`

    vm_profile.register()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = None
    for candidate in range(args.port, args.port_end):
        try:
            sock.bind((args.host, candidate))
            port = candidate
            break
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
    if port is None:
        print(f"cannot bind to any port in [{args.port}, {args.port_end})", file=sys.stderr)
        return 2
    sock.listen(1)
    rpc_server.logger.setLevel(logging.INFO)
    print(f"MNTVM_BOARD_LISTENING {port}", flush=True)
    print(f"board: {platform.machine()} python {platform.python_version()} "
          f"tvm {tvm.__version__}; tracker {thost}:{tport} key {args.key}", flush=True)
    rpc_server._listen_loop(sock, port, args.key, tracker_addr, None, args.host)  # pylint: disable=protected-access
    return 0


if __name__ == "__main__":
    sys.exit(main())
