"""Runs a command on a kernel that, for it and its children, has no Landlock.

A seccomp filter answers ENOSYS to landlock_create_ruleset (syscall 444 on x86_64 and
aarch64), which is how a kernel built without Landlock answers, then execs the command.
"""
import ctypes
import errno
import os
import platform
import struct
import sys

ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
LANDLOCK_CREATE_RULESET = 444
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def insn(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


program = b"".join([
    insn(LD_W_ABS, 4),  # seccomp_data.arch
    insn(JEQ_K, ARCHES[platform.machine()], 1, 0),
    insn(RET_K, ALLOW),
    insn(LD_W_ABS, 0),  # seccomp_data.nr
    insn(JEQ_K, LANDLOCK_CREATE_RULESET, 0, 1),
    insn(RET_K, ERRNO | errno.ENOSYS),
    insn(RET_K, ALLOW),
])


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(program) // 8, program)
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f"no_landlock: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit(f"no_landlock: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
