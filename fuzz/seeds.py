#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets into fuzz/corpus/<target>/ (not committed).

Hand-encoded protobuf: one realistic message per flow with every block set, the same
messages in an Envelope, a few small edge cases, and each payload again with every key and
length prefix over-long (valid protobuf that mutations rarely produce by themselves).
Run from anywhere: python3 fuzz/seeds.py
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
NISS = "85073003328"  # valid check number (born 1985)
NISS_2000 = "05031512367"  # valid, born in the 2000s


OVERLONG = False  # when set, every key and length is written one byte longer than needed


def varint(n, overlong_ok=True):
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    if OVERLONG and overlong_ok and len(out) < 10:
        # Valid protobuf: a decoder accepts a varint padded with a continuation and a zero.
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def msg(*fields):
    """fields: (number, value); str/bytes -> LEN, int/bool -> VARINT, tuple -> sub-message,
    list -> repeated."""
    out = bytearray()
    for number, value in fields:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, tuple):
                body = msg(*v) if v and isinstance(v[0], tuple) else b""
                out += varint(number << 3 | 2) + varint(len(body)) + body
            elif isinstance(v, (bytes, str)):
                b = v.encode() if isinstance(v, str) else v
                out += varint(number << 3 | 2) + varint(len(b)) + b
            else:
                out += varint(number << 3 | 0) + varint(int(v), overlong_ok=False)
    return bytes(out)


def period(start, end=""):
    return ((1, start), (2, end)) if end else ((1, start),)


ADDRESS = ((1, "Rue de la Loi"), (2, "16"), (3, "b2"), (4, "1000"), (5, "Bruxelles"), (6, "150"))

def a052():
    return msg(
    (1, NISS),
    (2, "A052-2026-000123"),
    (3, "2026-11-02"),
    (4, "300"),
    (5, [
        ((1, 1), (2, 1), (3, period("2026-09-01", "2026-10-31")), (4, 1), (5, "INC-A"), (6, 1),
         (11, [
             ((1, "OP"), (2, "10"), (3, 2), (4, 1), (5, 1), (6, period("2026-09-01", "2026-09-30")),
              (7, 123456), (8, 26), (9, 0)),
             ((1, "OP"), (2, "10"), (3, 2), (4, 1), (5, 1), (6, period("2026-10-01", "2026-10-31")),
              (7, 130000), (8, 27)),
         ])),
        ((1, 3), (2, 2), (3, period("2026-03-01")), (7, "2026-04-15"), (8, "2026-04-17")),
    ]),
)

OCCUPATION = (
    (1, 1), (2, "0001"), (3, period("2026-07-01", "2026-09-30")), (4, "200"), (5, 500), (6, 3800),
    (7, 3800), (8, "1"), (11, "E"), (12, False), (18, 1), (20, "2.123.456.789"),
    (21, [((1, 1), (2, "1"), (3, 6500), (4, 49400))]),
    (22, [((1, 1), (2, "1"), (3, 0), (4, 0), (5, 1250000)), ((1, 2), (2, "2"), (3, 12), (5, -5000))]),
    (23, ((1, "1"), (2, "A"), (3, "Attaché"), (4, period("2026-07-01")), (5, 1), (6, "1"), (7, "2"))),
    (24, [((1, period("2026-07-01")), (2, "2015-01-01"), (3, "A11"), (4, 312345), (5, 3800), (6, 3800))]),
    (25, [((1, "S1"), (2, period("2026-07-01")), (3, 100000), (4, 500), (7, 5000))]),
)

def dmfa():
    return msg(
    (1, (
        (1, "123456789"), (3, "0123456749"), (4, False), (5, 2026), (6, 3), (7, 1), (8, 987654321),
        (9, "2026-05-01"),
        (10, (
            (1, NISS), (3, "Dupont"), (4, "Marie"), (5, "1985-07-30"), (6, "Bruxelles"), (7, 2),
            (8, ADDRESS), (9, "150"), (10, "150"), (11, "ORI-1"),
            (12, [
                ((1, "010"), (2, "495"), (3, "2026-07-01"), (4, "2026-09-30"), (5, False), (6, "1"),
                 (7, [OCCUPATION, OCCUPATION]),
                 (8, [((1, "1"), (2, 2500), (3, 10000))])),
            ]),
        )),
    )),
)

def dimona():
    return msg(
    (1, "000123456789"), (2, "DIM-00001234"), (3, 1),
    (4, ((1, "123456789"), (2, "NSSO"), (3, "0123456749"), (5, "Dupont SA"), (8, ADDRESS), (9, 1),
         (10, "SA"), (12, "010"), (13, "SS1"))),
    (5, ((1, "987654321"), (3, "0987654312"), (4, "User NV"), (7, ADDRESS))),
    (6, ((1, NISS_2000), (2, "ORI"), (3, "Janssens"), (4, "Lucas"), (5, "2005-03-15"), (6, 1),
         (7, "150"), (8, ADDRESS), (9, "150"))),
    (7, ((1, ADDRESS), (2, True), (3, "2.123.456.789"), (5, "2026-11-01"), (6, "2026-11-30"),
         (7, "302"), (8, 3), (10, 12))),
)

PAYLOADS = [("a052", 0, a052), ("dmfa", 1, dmfa), ("dimona", 2, dimona)]


def overlong(payload_fn):
    global OVERLONG
    OVERLONG = True
    try:
        return payload_fn()
    finally:
        OVERLONG = False
NISS_OF = {"a052": NISS, "dmfa": NISS, "dimona": NISS_2000}
ENVELOPE_FIELD = {"a052": 10, "dmfa": 11, "dimona": 12}
GRANTS = 6  # (deliberation, flow) grants in config/: the selector wraps around anyway


def envelope(name, flow, payload, extra=()):
    return msg(
        (1, f"msg-{name}-1"), (2, flow + 1), (3, NISS_OF[name]),
        (4, period("2026-07-01", "2026-09-30")), *extra, (ENVELOPE_FIELD[name], payload),
    )


def write(target, name, data):
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def main():
    edge = [b"", b"\x0a\x00", b"\x0a\x80\x01" + b"x" * 16, b"\x08\x96\x01"]
    for name, flow, payload_fn in PAYLOADS:
        payload = payload_fn()
        long = overlong(payload_fn)
        assert len(long) > len(payload)
        write("payload_validation", f"{name}", bytes([flow]) + payload)
        write("payload_validation", f"{name}-overlong", bytes([flow]) + long)
        for i, e in enumerate(edge):
            write("payload_validation", f"{name}-edge{i}", bytes([flow]) + e)
        for grant in range(GRANTS):
            write("field_filter", f"{name}-grant{grant}", bytes([grant]) + payload)
            write("field_filter", f"{name}-overlong-grant{grant}", bytes([grant]) + long)
        write("envelope_decode", name, envelope(name, flow, payload))
        write("envelope_decode", f"{name}-overlong", envelope(name, flow, long))
        write("envelope_decode", f"{name}-addressed",
              envelope(name, flow, payload, ((5, "sigedis"), (7, "CF-2026-1"))))
    write("envelope_decode", "empty", b"")
    write("envelope_decode", "no-payload", msg((1, "m"), (2, 1), (3, NISS)))
    print("seeds written under", HERE / "corpus")


if __name__ == "__main__":
    main()
