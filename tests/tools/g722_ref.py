#!/usr/bin/env python3
"""Reference G.722 (64 kbit/s) from spandsp, the test suite's independent implementation.

usage: g722_ref.py PCM_IN G722_OUT PCM_DECODED_OUT
PCM_IN: 16 kHz signed 16-bit little-endian mono. Writes the spandsp encoding of it and
spandsp's decoding of that encoding (what a conforming decoder must output).
"""
import ctypes
import ctypes.util
import sys

lib = ctypes.CDLL(ctypes.util.find_library("spandsp") or "libspandsp.so.2")
lib.g722_encode_init.restype = ctypes.c_void_p
lib.g722_encode_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lib.g722_encode.restype = ctypes.c_int
lib.g722_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
lib.g722_decode_init.restype = ctypes.c_void_p
lib.g722_decode_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lib.g722_decode.restype = ctypes.c_int
lib.g722_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]


def main():
    pcm = open(sys.argv[1], "rb").read()
    samples = len(pcm) // 2
    enc = lib.g722_encode_init(None, 64000, 0)
    out = ctypes.create_string_buffer(samples // 2 + 1)
    amp = (ctypes.c_int16 * samples).from_buffer_copy(pcm[: samples * 2])
    n = lib.g722_encode(enc, out, amp, samples)
    coded = out.raw[:n]
    open(sys.argv[2], "wb").write(coded)
    dec = lib.g722_decode_init(None, 64000, 0)
    pcm_out = (ctypes.c_int16 * (2 * len(coded)))()
    m = lib.g722_decode(dec, pcm_out, coded, len(coded))
    open(sys.argv[3], "wb").write(bytes(pcm_out)[: 2 * m])


if __name__ == "__main__":
    main()
