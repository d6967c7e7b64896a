#!/usr/bin/env python3
"""Sends a raw 8 kHz G.711 file as SRTP, protected by libsrtp (pylibsrtp), to a recorder.

An independent SRTP implementation for siprec's interoperability tests and a manual tool:

  srtp_send.py --to 127.0.0.1:23000 --profile AES_CM_128_HMAC_SHA1_80 \
      --key <base64 key||salt> --audio caller.ul [--from-port 29500] [--rtcp]

Packets are 20 ms (160 samples); --pace-ms 0 sends as fast as the socket takes them.
--rekey-at N --rekey-key K switches to a second key from packet N on (a new libsrtp
session, as an SBC does after a re-INVITE with a new crypto line).
"""
import argparse
import base64
import socket
import struct
import sys
import time

import pylibsrtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def session(profile, key_b64):
    key = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=PROFILES[profile])
    return pylibsrtp.Session(policy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--profile", required=True, choices=sorted(PROFILES))
    ap.add_argument("--key", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--pt", type=int, default=0)
    ap.add_argument("--ssrc", type=lambda s: int(s, 0), default=0x5EC0DE01)
    ap.add_argument("--seq", type=int, default=1000, help="first sequence number")
    ap.add_argument("--from-port", type=int, default=0)
    ap.add_argument("--pace-ms", type=float, default=20.0)
    ap.add_argument("--rtcp", action="store_true", help="SRTCP sender report every 50 packets")
    ap.add_argument("--rekey-at", type=int, default=-1)
    ap.add_argument("--rekey-key")
    ap.add_argument("--dump", action="store_true", help="print packets as hex, send nothing")
    a = ap.parse_args()

    host, port = a.to.rsplit(":", 1)
    dest = (host, int(port))
    rtcp_dest = (host, int(port) + 1)
    audio = open(a.audio, "rb").read()
    srtp = session(a.profile, a.key)
    rtp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.from_port:
        rtp_sock.bind(("127.0.0.1", a.from_port))
        rtcp_sock.bind(("127.0.0.1", a.from_port + 1))
    start = time.monotonic()
    sent = 0
    octets = 0
    for n, off in enumerate(range(0, len(audio) - 159, 160)):
        if n == a.rekey_at:
            srtp = session(a.profile, a.rekey_key)
        seq = (a.seq + n) & 0xFFFF
        header = struct.pack("!BBHII", 0x80, a.pt & 0x7F, seq, (n * 160) & 0xFFFFFFFF, a.ssrc)
        packet = srtp.protect(header + audio[off:off + 160])
        if a.dump:
            print(packet.hex())
        else:
            rtp_sock.sendto(packet, dest)
        sent += 1
        octets += 160
        if a.rtcp and n % 50 == 49:
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, a.ssrc, 0, 0, n * 160, sent, octets)
            rtcp = srtp.protect_rtcp(sr)
            if a.dump:
                print("rtcp " + rtcp.hex())
            else:
                rtcp_sock.sendto(rtcp, rtcp_dest)
        if a.pace_ms > 0:
            delay = start + (n + 1) * a.pace_ms / 1000.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(f"sent {sent} packets", file=sys.stderr)


if __name__ == "__main__":
    main()
