"""Thin wrappers over the bpf(2) calls the datapath needs, via libbcc and libc.

libbcc exports element operations and the ring buffer; pinning and opening a pinned object
(BPF_OBJ_PIN / BPF_OBJ_GET) and map info are issued here directly.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from typing import NamedTuple

from bcc.libbcc import lib as bcclib

_libc = ct.CDLL(None, use_errno=True)
_NR_BPF = 321          # x86_64 syscall number of bpf(2)
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_NAME_LEN = 16

bcclib.bpf_obj_get_info.restype = ct.c_int
bcclib.bpf_obj_get_info.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]

BPF_ANY = 0            # update flag: create or replace

# Map types the backend handles (uapi/linux/bpf.h enum bpf_map_type).
MAP_TYPE_HASH = 1
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_RINGBUF = 27
BATCH_CAPABLE_TYPES = frozenset({MAP_TYPE_HASH, MAP_TYPE_LRU_HASH})


class _ObjAttr(ct.Structure):
    _fields_ = (("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32))


class _MapInfo(ct.Structure):
    # struct bpf_map_info, leading fields only (the kernel fills up to the size we pass).
    _fields_ = (("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32),
                ("map_flags", ct.c_uint32), ("name", ct.c_char * _BPF_NAME_LEN))


class MapInfo(NamedTuple):
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def _obj_call(cmd: int, path: str, fd: int = 0) -> int:
    raw = os.fsencode(path)
    buf = ct.create_string_buffer(raw)
    attr = _ObjAttr(pathname=ct.cast(buf, ct.c_void_p).value or 0, bpf_fd=fd)
    ret = _libc.syscall(_NR_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(ret)


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd."""
    return _obj_call(_BPF_OBJ_GET, path)


def obj_pin(fd: int, path: str) -> None:
    """Pin the object behind ``fd`` at ``path`` on bpffs."""
    _obj_call(_BPF_OBJ_PIN, path, fd)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    if bcclib.bpf_obj_get_info(fd, ct.byref(info), ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries,
                   info.name.decode(errors="replace"))


def _check(ret: int) -> None:
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))


def lookup(fd: int, key: ct.Array[ct.c_char], value: ct.Array[ct.c_char]) -> bool:
    """Fill ``value`` for ``key``; False if the key is absent."""
    if bcclib.bpf_lookup_elem(fd, key, value) < 0:
        err = ct.get_errno()
        if err == errno.ENOENT:
            return False
        raise OSError(err, os.strerror(err))
    return True


def next_key(fd: int, key: ct.Array[ct.c_char] | None, out: ct.Array[ct.c_char]) -> bool:
    """Store the key after ``key`` (the first key for None) in ``out``; False at the end."""
    if bcclib.bpf_get_next_key(fd, key, out) < 0:
        err = ct.get_errno()
        if err == errno.ENOENT:  # no more keys
            return False
        raise OSError(err, os.strerror(err))
    return True


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check(bcclib.bpf_update_elem(fd, key, value, flags))


def delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False if it was not there."""
    if bcclib.bpf_delete_elem(fd, key) < 0:
        err = ct.get_errno()
        if err == errno.ENOENT:
            return False
        raise OSError(err, os.strerror(err))
    return True


def update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    n = ct.c_uint32(count)
    _check(bcclib.bpf_update_batch(fd, keys, values, ct.byref(n)))


def delete_batch(fd: int, keys: bytes, count: int) -> None:
    n = ct.c_uint32(count)
    _check(bcclib.bpf_delete_batch(fd, keys, ct.byref(n)))


_BPF_PROG_TEST_RUN = 10


class _TestRunAttr(ct.Structure):
    # The test-run member of union bpf_attr (uapi/linux/bpf.h), up to ctx_out.
    _fields_ = (("prog_fd", ct.c_uint32), ("retval", ct.c_uint32),
                ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
                ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32),
                ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
                ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64))


def prog_test_run(fd: int, packet: bytes) -> int:
    """Run a loaded program once on ``packet`` (BPF_PROG_TEST_RUN); returns its return value."""
    data_in = ct.create_string_buffer(packet, len(packet))
    data_out = ct.create_string_buffer(len(packet) + 256)
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(packet), data_size_out=len(data_out),
                        data_in=ct.addressof(data_in), data_out=ct.addressof(data_out),
                        repeat=1)
    if _libc.syscall(_NR_BPF, _BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return int(attr.retval)
