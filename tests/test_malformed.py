"""Hostile and broken input must not take the broker down or lose data."""

import socket
import struct
import subprocess
import time


def frame(api_key, version, correlation_id, body, client_id=b"fuzz"):
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    if version >= flexible_since(api_key):
        header += b"\x00"  # empty tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def flexible_since(api_key):
    return {0: 9, 1: 12, 3: 9, 18: 3}.get(api_key, 99)


def send_raw(broker, data, expect_reply=False):
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the broker may close on the first bad bytes, before we finish sending
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def api_versions_ok(broker):
    reply = send_raw(broker, frame(18, 0, 77, b""))
    size, correlation, error = struct.unpack(">iih", reply[:10])
    return correlation == 77 and error == 0


def test_garbage_frames_close_only_their_connection(broker):
    subprocess.run(["kcat", "-b", broker.bootstrap, "-P", "-t", "keep"], input=b"precious\n", check=True)
    attacks = [
        struct.pack(">i", -1),                                  # negative size
        struct.pack(">i", 0x7FFFFFFF) + b"x" * 100,             # absurd size
        struct.pack(">i", 100) + b"short",                      # truncated frame
        struct.pack(">i", 3) + b"abc",                          # shorter than a header
        frame(999, 0, 1, b""),                                  # unknown API key
        frame(0, 99, 1, b""),                                   # unsupported Produce version
        frame(3, 12, 1, b"\xff\xff\xff\xff\xff"),               # Metadata with a broken body
        # Produce v3: null transactional id, acks -1, timeout, then a topic array claiming
        # 2^31-1 entries: the decoder must fail on missing bytes, not reserve memory for them.
        frame(0, 3, 1, struct.pack(">hhii", -1, -1, 1000, 0x7FFFFFFF)),
        # Fetch v4 with a huge partition array inside one topic.
        frame(1, 4, 1, struct.pack(">iiiib", -1, 100, 1, 1 << 20, 0) + struct.pack(">ih", 1, 1) + b"t" + struct.pack(">i", 0x7FFFFFFF)),
        b"\x00" * 3,                                            # not even a size
    ]
    for attack in attacks:
        send_raw(broker, attack)
        assert broker.alive(), broker.log()
        assert api_versions_ok(broker)
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-C", "-t", "keep", "-e", "-q"],
                         capture_output=True, check=True).stdout
    assert out == b"precious\n"


def test_api_versions_from_the_future_gets_error_35_and_our_versions(broker):
    reply = send_raw(broker, frame(18, 42, 5, b""))
    size, correlation, error, count = struct.unpack(">iihi", reply[:14])
    assert (correlation, error) == (5, 35)
    keys = {struct.unpack(">hhh", reply[14 + 6 * i: 20 + 6 * i])[0] for i in range(count)}
    assert {0, 1, 2, 3, 18}.issubset(keys)


def test_a_corrupt_batch_is_refused_with_corrupt_message(broker):
    subprocess.run(["kcat", "-b", broker.bootstrap, "-L", "-t", "crc"], capture_output=True, check=True)
    batch = bytearray(record_batch(b"payload"))
    batch[-2] ^= 0xFF  # damage a record byte; the CRC no longer matches
    body = struct.pack(">hhi", -1, 1, 5000) + struct.pack(">i", 1) + struct.pack(">h", 3) + b"crc"
    body += struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(batch)) + bytes(batch)
    reply = send_raw(broker, frame(0, 3, 9, body))
    # ProduceResponse v3: [topics: name, [partition, error, ...]]
    _, correlation, _topics, name_len = struct.unpack(">iiih", reply[:14])
    offset = 14 + name_len
    _parts, partition, error = struct.unpack(">iih", reply[offset:offset + 10])
    assert (correlation, partition, error) == (9, 0, 2)


def record_batch(value):
    """A one-record RecordBatch v2, CRC32C and all (crc computed by the broker's own rules)."""
    import zlib  # noqa: F401  (CRC32C is not in the stdlib; compute it by hand below)

    def varint(n):
        n = (n << 1) ^ (n >> 63)
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    record = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    records = varint(len(record)) + record
    after_crc = struct.pack(">hiqqqhii", 0, 0, 1000, 1000, -1, -1, -1, 1) + records
    crc = crc32c(after_crc)
    head = struct.pack(">qiibI", 0, 0, -1, 2, crc)
    length = len(head) - 12 + len(after_crc)
    return struct.pack(">qi", 0, length) + head[12:] + after_crc


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_a_client_that_pipelines_without_reading_gets_every_answer_in_order(broker):
    # Far more requests than the broker queues responses for: it stops reading this client
    # until it reads, and nothing is lost or reordered.
    count = 20000
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    try:
        s.sendall(b"".join(frame(18, 0, i, b"") for i in range(count)))
        time.sleep(0.5)
        assert api_versions_ok(broker), "the broker must keep serving others meanwhile"
        data = b""
        seen = []
        while len(seen) < count:
            chunk = s.recv(1 << 16)
            assert chunk, f"connection closed after {len(seen)} responses"
            data += chunk
            while len(data) >= 4:
                size = struct.unpack(">i", data[:4])[0]
                if len(data) < 4 + size:
                    break
                seen.append(struct.unpack(">i", data[4:8])[0])
                data = data[4 + size:]
        assert seen == list(range(count))
    finally:
        s.close()
