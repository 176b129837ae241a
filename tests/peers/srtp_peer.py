#!/usr/bin/env python3
"""The media side of an SDES-SRTP callee for tests/it/media_srtp.rs, on libsrtp
(PyPI pylibsrtp): an implementation independent of otpdial's.

Usage: srtp_peer.py RTP_PORT OUR_KEY_B64 MESSAGE_LOG DTMF_AFTER srtp|plain OUT_JSON

Binds 127.0.0.1:RTP_PORT (RTP) and RTP_PORT+1 (RTCP) and keeps every datagram the
gateway sends until 2 s pass without one (after the first) or 90 s in all. After
DTMF_AFTER RTP packets it presses key 5 (RFC 4733 events on payload type 101),
protected with OUR_KEY_B64, the key of the callee's SDP answer (`srtp`), or in plain
RTP (`plain`, which the gateway must drop). At the end it reads the
gateway's SDES key (tag 1) from the INVITE in SIPp's MESSAGE_LOG, decrypts every packet
with libsrtp and writes OUT_JSON: for RTP and RTCP, each datagram as sent (hex) and as
libsrtp decrypted it (hex, or null when libsrtp refused it).
"""
import base64
import json
import re
import select
import socket
import struct
import sys
import time

from pylibsrtp import Error, Policy, Session

PROFILE = Policy.SRTP_PROFILE_AES128_CM_SHA1_80


def main():
    port, our_key, message_log, dtmf_after, mode, out = sys.argv[1:7]
    port, dtmf_after = int(port), int(dtmf_after)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", port))
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", port + 1))
    # Ready: the test waits for this line before starting the call.
    print("ready", flush=True)
    tx = Session(
        policy=Policy(
            key=base64.b64decode(our_key),
            ssrc_type=Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=PROFILE,
        )
    )
    got_rtp, got_rtcp = [], []
    start = time.monotonic()
    last = None
    pressed = False
    while time.monotonic() - start < 90:
        if last is not None and time.monotonic() - last > 2.0:
            break
        ready, _, _ = select.select([rtp, rtcp], [], [], 0.1)
        for sock in ready:
            data, source = sock.recvfrom(4096)
            last = time.monotonic()
            if sock is rtp:
                got_rtp.append(data)
                if len(got_rtp) >= dtmf_after and not pressed:
                    pressed = True
                    press(rtp, source, 5, tx.protect if mode == "srtp" else bytes)
            else:
                got_rtcp.append(data)

    invite = open(message_log, encoding="latin-1").read()
    m = re.search(r"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:([A-Za-z0-9+/=]+)", invite)
    if not m:
        sys.exit("no SDES key in the INVITE")
    theirs = base64.b64decode(m.group(1))
    rx = Session(
        policy=Policy(key=theirs, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE)
    )
    result = {"rtp": [], "rtcp": [], "pressed": pressed}
    for data in got_rtp:
        try:
            plain = rx.unprotect(data).hex()
        except Error:
            plain = None
        result["rtp"].append([data.hex(), plain])
    for data in got_rtcp:
        try:
            plain = rx.unprotect_rtcp(data).hex()
        except Error:
            plain = None
        result["rtcp"].append([data.hex(), plain])
    with open(out, "w") as f:
        json.dump(result, f)


def press(sock, to, key, protect):
    """`key` for 60 ms: a start, an update and three End packets (RFC 4733 §2.5.1),
    each through `protect`."""
    ssrc, ts, seq = 0x5EC0_0000 + key, 8000 * key, 100 * key
    for i, (end, duration) in enumerate([(0, 160), (0, 320), (1, 480), (1, 480), (1, 480)]):
        header = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0) | 101, seq + i, ts, ssrc)
        payload = struct.pack("!BBH", key, (end << 7) | 10, duration)
        sock.sendto(protect(header + payload), to)


if __name__ == "__main__":
    main()
