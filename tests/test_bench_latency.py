"""The benchmark's latency relay (bench/latency.py): it delays each request, passes every byte
on intact, and counts requests as the client sent them."""

from __future__ import annotations

import http.client
import random
import ssl
import time

from bench.latency import LatencyProxy, RequestCounter
from tests.conftest import TestTokenCredential

# Four requests: a GET, a PUT whose body looks like a header block's end and a request line, a
# chunked PUT with a chunk extension and a trailer, and a HEAD.
BODY = b"GET / HTTP/1.1\r\n\r\nX\r\n\r\n" * 3
STREAM = (b"GET /c?restype=container HTTP/1.1\r\nHost: h\r\n\r\n"
          b"PUT /c/a HTTP/1.1\r\nHost: h\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
          + b"PUT /c/b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"
          b"HEAD /c/a HTTP/1.1\r\nHost: h\r\n\r\n")


def test_request_counter_counts_each_request_however_the_stream_is_cut():
    rng = random.Random(7)
    cuts = [[len(STREAM)], [1] * len(STREAM)] + [[rng.randint(1, 40) for _ in range(len(STREAM))] for _ in range(50)]
    for sizes in cuts:
        counter, at = RequestCounter(), 0
        for size in sizes:
            counter.feed(STREAM[at:at + size])
            at += size
            if at >= len(STREAM):
                break
        assert counter.requests == 4, sizes[:20]
    half = RequestCounter()
    half.feed(STREAM[:STREAM.index(b"PUT /c/b")] + b"PUT /c/b HTTP/1.1\r\nHost:")  # a header block not yet whole
    assert half.requests == 2


def test_relay_delays_each_request_and_counts_what_the_sdk_sent(azurite_oauth, monkeypatch):
    from azure.storage.blob import ContainerClient

    import bench.latency

    # Little held before the client's side pauses: each block's upload pauses and resumes it
    # many times, and the bytes must still arrive whole and in order.
    monkeypatch.setattr(bench.latency, "_PAUSE_BYTES", 64 * 1024)
    url, cert = azurite_oauth
    latency = 0.1
    relay = LatencyProxy(int(url.split(":")[2].split("/")[0]), cert, cert.parent / "key.pem", latency)
    try:
        sent = []
        container = ContainerClient(f"https://127.0.0.1:{relay.port}/devstoreaccount1", "relayed",
                                    credential=TestTokenCredential(), connection_verify=str(cert),
                                    max_single_put_size=1024 * 1024, max_block_size=4 * 1024 * 1024,
                                    raw_response_hook=lambda response: sent.append(response.http_request.method))
        started = time.monotonic()
        container.create_container()
        assert time.monotonic() - started >= latency
        large = random.Random(1).randbytes(10 * 1024 * 1024)
        started = time.monotonic()
        container.upload_blob("large", large)  # three Put Block and a Put Block List, one after another
        took = time.monotonic() - started
        # each request waited once; a relay that held each chunk in turn would take 16 s and more
        assert 4 * latency <= took < 4 * latency + 8, took
        container.upload_blob("small", b"x" * 100)
        assert container.download_blob("large").readall() == large
        assert [b.name for b in container.list_blobs()] == ["large", "small"]
        assert sent.count("PUT") == 6 and relay.count() == len(sent), sent

        # a chunked body is passed over, not read as requests, and the next request on the
        # connection still goes through (unsigned: Azurite answers both, with an error)
        before = relay.count()
        connection = http.client.HTTPSConnection("127.0.0.1", relay.port,
                                                 context=ssl.create_default_context(cafile=str(cert)))
        connection.request("PUT", "/devstoreaccount1/relayed/c", body=iter([b"GET / HTTP/1.1\r\n\r\n", b"x"]),
                           encode_chunked=True)
        answer = connection.getresponse()
        answer.read()
        assert 400 <= answer.status < 500 and relay.count() == before + 1
        connection.request("GET", "/devstoreaccount1/relayed?restype=container")
        answer = connection.getresponse()
        assert 400 <= answer.status < 500 and relay.count() == before + 2
        connection.close()
    finally:
        relay.stop()
