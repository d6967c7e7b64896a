#!/usr/bin/env python3
"""Reference Opus from libopus (Debian libopus0) for the codec tests.

usage: opus_ref.py PCM_IN PACKETS_OUT PCM_DECODED_OUT LOST
PCM_IN: 48 kHz signed 16-bit little-endian mono, a multiple of 960 samples. Encodes 20 ms
packets (VoIP, in-band FEC on) into PACKETS_OUT as 2-byte big-endian lengths + bytes, and
writes what a receiver that never gets packet LOST (an index; -1 for none) decodes: the
packet after it rebuilds the gap from its FEC data, then decodes itself.
"""
import ctypes
import ctypes.util
import struct
import sys

lib = ctypes.CDLL(ctypes.util.find_library("opus") or "libopus.so.0")
lib.opus_encoder_create.restype = ctypes.c_void_p
lib.opus_encoder_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_int)]
lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                            ctypes.c_int]
lib.opus_decoder_create.restype = ctypes.c_void_p
lib.opus_decoder_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                            ctypes.c_int, ctypes.c_int]

OPUS_APPLICATION_VOIP = 2048
OPUS_SET_INBAND_FEC_REQUEST = 4012
OPUS_SET_PACKET_LOSS_PERC_REQUEST = 4014


def main():
    pcm = open(sys.argv[1], "rb").read()
    lost = int(sys.argv[4])
    err = ctypes.c_int(0)
    enc = lib.opus_encoder_create(48000, 1, OPUS_APPLICATION_VOIP, ctypes.byref(err))
    assert err.value == 0
    lib.opus_encoder_ctl(ctypes.c_void_p(enc), ctypes.c_int(OPUS_SET_INBAND_FEC_REQUEST),
                         ctypes.c_int(1))
    lib.opus_encoder_ctl(ctypes.c_void_p(enc), ctypes.c_int(OPUS_SET_PACKET_LOSS_PERC_REQUEST),
                         ctypes.c_int(20))
    packets = []
    for i in range(0, len(pcm) - 1919, 1920):
        frame = (ctypes.c_int16 * 960).from_buffer_copy(pcm[i:i + 1920])
        out = ctypes.create_string_buffer(4000)
        n = lib.opus_encode(enc, frame, 960, out, 4000)
        assert n > 0, n
        packets.append(out.raw[:n])
    with open(sys.argv[2], "wb") as f:
        for p in packets:
            f.write(struct.pack(">H", len(p)) + p)
    dec = lib.opus_decoder_create(48000, 1, ctypes.byref(err))
    decoded = bytearray()
    for i, p in enumerate(packets):
        if i == lost:
            continue
        out = (ctypes.c_int16 * 960)()
        if i == lost + 1 and lost >= 0:
            n = lib.opus_decode(dec, p, len(p), out, 960, 1)
            assert n == 960, n
            decoded += bytes(out)
        n = lib.opus_decode(dec, p, len(p), out, 960, 0)
        assert n == 960, n
        decoded += bytes(out)
    open(sys.argv[3], "wb").write(decoded)


if __name__ == "__main__":
    main()
