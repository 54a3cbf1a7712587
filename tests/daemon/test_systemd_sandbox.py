"""The feed binds its default endpoint under the unit's ``RestrictAddressFamilies=``.

systemd enforces ``RestrictAddressFamilies=`` with a seccomp filter: ``socket()`` with any other
address family fails with ``EAFNOSUPPORT``. libzmq lists the network interfaces (a netlink
socket) when it binds a TCP endpoint and aborts when it cannot (zeromq/libzmq#4737), so with
``AF_UNIX AF_INET AF_INET6`` alone the service died at start-up, before READY=1. The test
installs the same kind of filter in a child process (x86_64 Linux: its system call numbers)
with the families the unit lists, then binds an XPUB socket to ``tcp://127.0.0.1:<port>`` as
the feed does; and checks that the filter bites (the same bind without netlink aborts).
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from system_tools import unavailable

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "motionwatch.service"

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the seccomp filter here uses x86_64 Linux system call numbers")

# seccomp: a classic BPF program over struct seccomp_data (nr at 0, arch at 4, args[0] at 16)
_FILTERED_EXEC = textwrap.dedent("""
    import ctypes, os, struct, sys
    allowed = [int(v) for v in sys.argv[1].split(",")]
    LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
    AUDIT_ARCH_X86_64, SYS_SOCKET, EAFNOSUPPORT = 0xC000003E, 41, 97
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    k = len(allowed)
    allow_at = 6 + k  # index of the final RET ALLOW
    program = [(LD_ABS_W, 0, 0, 4), (JEQ_K, 0, allow_at - 2, AUDIT_ARCH_X86_64),
               (LD_ABS_W, 0, 0, 0), (JEQ_K, 0, allow_at - 4, SYS_SOCKET),
               (LD_ABS_W, 0, 0, 16)]
    program += [(JEQ_K, allow_at - (5 + j) - 1, 0, family) for j, family in enumerate(allowed)]
    program += [(RET_K, 0, 0, ERRNO | EAFNOSUPPORT), (RET_K, 0, 0, ALLOW)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.cast(code, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \\
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(77)  # no seccomp here
    os.execv(sys.argv[2], sys.argv[2:])
""")

_BIND_LIKE_THE_FEED = (
    "import zmq\n"
    "context = zmq.Context()\n"
    "xpub = context.socket(zmq.XPUB)\n"
    "port = xpub.bind_to_random_port('tcp://127.0.0.1')\n"
    "print('bound', port, flush=True)\n")


def _unit_families() -> list[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("RestrictAddressFamilies="):
            return line.partition("=")[2].split()
    raise AssertionError(f"{UNIT} has no RestrictAddressFamilies=")


def _bind_under(families: list[str]) -> subprocess.CompletedProcess:
    numbers = ",".join(str(int(getattr(socket, name))) for name in families)
    result = subprocess.run([sys.executable, "-c", _FILTERED_EXEC, numbers, sys.executable,
                             "-c", _BIND_LIKE_THE_FEED], capture_output=True, text=True,
                            timeout=60)
    if result.returncode == 77:
        unavailable("seccomp filters cannot be installed here")
    return result


def test_the_feed_binds_its_tcp_endpoint_under_the_units_address_families():
    families = _unit_families()
    assert "AF_NETLINK" in families
    allowed = _bind_under(families)
    assert allowed.returncode == 0 and allowed.stdout.startswith("bound "), allowed.stderr
    without_netlink = _bind_under([f for f in families if f != "AF_NETLINK"])
    assert without_netlink.returncode != 0  # libzmq aborts: the filter is the unit's
    assert "Address family not supported" in without_netlink.stderr
