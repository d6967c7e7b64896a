#!/usr/bin/env python3
"""Reference G.729 from bcg729 (Debian libbcg729-0) for the codec tests.

usage: g729_ref.py PCM_IN G729_OUT PCM_DECODED_OUT
PCM_IN: 8 kHz signed 16-bit little-endian mono, a multiple of 80 samples. Writes bcg729's
encoding (10 bytes per 10 ms, no VAD) and bcg729's decoding of it.
"""
import ctypes
import ctypes.util
import sys

lib = ctypes.CDLL(ctypes.util.find_library("bcg729") or "libbcg729.so.0")
lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
lib.bcg729Encoder.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
lib.initBcg729DecoderChannel.restype = ctypes.c_void_p
lib.bcg729Decoder.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint8,
                              ctypes.c_uint8, ctypes.c_uint8, ctypes.c_void_p]


def main():
    pcm = open(sys.argv[1], "rb").read()
    enc = lib.initBcg729EncoderChannel(0)
    dec = lib.initBcg729DecoderChannel()
    coded, decoded = bytearray(), bytearray()
    for i in range(0, len(pcm) - 159, 160):
        frame = (ctypes.c_int16 * 80).from_buffer_copy(pcm[i:i + 160])
        bits = (ctypes.c_uint8 * 10)()
        n = ctypes.c_uint8(0)
        lib.bcg729Encoder(enc, frame, bits, ctypes.byref(n))
        assert n.value == 10, n.value
        coded += bytes(bits)
        out = (ctypes.c_int16 * 80)()
        lib.bcg729Decoder(dec, bits, 10, 0, 0, 0, out)
        decoded += bytes(out)
    open(sys.argv[2], "wb").write(coded)
    open(sys.argv[3], "wb").write(decoded)


if __name__ == "__main__":
    main()
