"""The AS2 client and server over real TLS on loopback: what is refused, how every failure is
classified, what peers may send, asynchronous MDNs, slow clients. Bodies here are opaque bytes
(the crypto round trip is in test_as2_roundtrip.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest
from cryptography import x509

from adapters.as2 import (As2Client, As2Permanent, As2Reply, As2Security, As2Temporary, AsyncMdnSettings,
                          make_app, serve)
from adapters.as2.headers import encode_base64, entity_of
from adapters.as2.tls import server_context
from as2_helpers import AS2_HEADERS, HOST, TlsPki, raw_post, running

DER = bytes([0x30, 0x82, 0x03, 0x00]) + bytes(range(256)) * 3
SMIME = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
MDN = (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"\r\n'
       b"\r\n--b\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=r\r\n\r\n"
       b"--r\r\nContent-Type: message/disposition-notification\r\n\r\nDisposition: automatic-action/"
       b"MDN-sent-automatically; processed\r\n--r--\r\n--b--\r\n")


@pytest.fixture(scope="module")
def pki() -> TlsPki:
    return TlsPki()


class Recorder:
    """A handler that records what reached it and answers as told."""

    def __init__(self, reply: As2Reply | None = None, fail: Exception | None = None):
        self.seen = []
        self.reply = reply or As2Reply(mdn_entity=MDN)
        self.fail = fail

    async def __call__(self, req):
        self.seen.append(req)
        if self.fail:
            raise self.fail
        return self.reply


async def post(client: As2Client, body: bytes = DER, encoding: str = "binary", message_id: str = "m-1"):
    return await client.post(message_id=message_id, body=body, content_type=SMIME, subject="nazorg test",
                             transfer_encoding=encoding)


async def test_round_trip_headers_and_peer_identity(pki):
    handler = Recorder()
    async with running(pki, handler) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        resp = await post(client)
        again = await post(client)  # a retry: the same Message-ID
        await client.close()
    assert (resp.status, resp.mdn_entity, resp.as2_message_id) == (200, MDN, "<m-1@pi-vught>")
    assert resp.mdn_content_type.startswith("multipart/signed")
    req = handler.seen[0]
    assert (req.message_id, req.as2_from, req.as2_to) == ("m-1@pi-vught", "PI-VUGHT", "PLATFORM")
    assert handler.seen[1].message_id == req.message_id and again.as2_message_id == resp.as2_message_id
    assert req.body == entity_of(SMIME, DER)
    assert (req.wants_mdn, req.wants_signed_mdn, req.mic_algorithm, req.async_mdn_url) == (True, True, "sha-256", None)
    assert req.peer_certificate == pki.client.cert
    assert req.peer_chain == [pki.client.cert, pki.ca.cert]
    hd = req.headers
    assert (hd["AS2-Version"], hd["MIME-Version"], hd["Subject"]) == ("1.2", "1.0", "nazorg test")
    assert hd["Disposition-Notification-To"] == "as2@pi-vught.example.nl"
    assert hd["Disposition-Notification-Options"] == ("signed-receipt-protocol=optional, pkcs7-signature; "
                                                      "signed-receipt-micalg=optional, sha-256")
    assert hd["Date"].endswith(" GMT") and "Receipt-Delivery-Option" not in hd


async def test_a_reply_that_is_not_an_mdn_entity_is_a_500_not_a_crash(pki):
    async with running(pki, Recorder(As2Reply(mdn_entity=b"no header section"))) as srv:
        status, hdrs, body = await raw_post(srv.url(), pki, headers=AS2_HEADERS, data=DER)
    assert (status, body, hdrs["Server"]) == (500, b"internal error\n", "nazorg-gateway-as2")


def test_partner_url_must_be_https(pki):
    for url in ("http://127.0.0.1/as2", "ftp://x/as2", "https:///as2", "https://user:pw@host/as2"):
        with pytest.raises(ValueError):
            pki.partner(url)


# -- TLS refusals ---------------------------------------------------------------------------------

async def test_untrusted_client_certificate_is_refused_in_the_handshake(pki):
    handler = Recorder()
    async with running(pki, handler) as srv:
        client = As2Client(pki.settings(client=pki.foreign_client), pki.partner(srv.url()))
        with pytest.raises(As2Security) as e:  # TLS 1.3: the refusal arrives after the client's handshake
            await post(client)
        await client.close()
        assert "refused our client certificate" in e.value.reason
        # TLS 1.2: the handshake itself fails; without any certificate too
        for leaf in (pki.foreign_client, None):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(cadata=pki.ca.pem.decode())
            if leaf is not None:
                from adapters.as2.tls import load_cert_chain_pem
                load_cert_chain_pem(ctx, leaf.chain_pem, leaf.key_pem)
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                reader, writer = await asyncio.open_connection(HOST, srv.port, ssl=ctx)
                writer.write(b"POST /as2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await reader.read()
    assert handler.seen == []


async def test_server_certificate_not_trusted_by_the_client(pki):
    handler = Recorder()
    async with running(pki, handler, server=pki.foreign_server) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        with pytest.raises(As2Security, match="server certificate is not trusted"):
            await post(client)
        await client.close()
    assert handler.seen == []


async def test_server_certificate_for_another_host(pki):
    handler = Recorder()
    async with running(pki, handler, server=pki.other_host) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        with pytest.raises(As2Security, match="does not name the URL's host"):
            await post(client)
        await client.close()
    san = pki.other_host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["elsewhere.example"]  # trusted, only the name is wrong
    assert handler.seen == []


# -- HTTP outcomes --------------------------------------------------------------------------------

@pytest.mark.parametrize("status, text, kind", [
    (500, "database unavailable", As2Temporary), (503, "busy", As2Temporary), (429, "slow down", As2Temporary),
    (408, "timeout", As2Temporary), (400, "AS2-To names no party \x1b[1mserved\x1b[0m here", As2Permanent),
    (403, "not allowed", As2Permanent), (302, "moved", As2Permanent),
])
async def test_http_statuses_are_classified(pki, status, text, kind):
    async with running(pki, Recorder(As2Reply(status=status, text=text))) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        with pytest.raises(kind) as e:
            await post(client)
        await client.close()
    assert e.value.status == status
    assert e.value.remote_reply == text.replace("\x1b", " ").replace("  ", " ")
    assert str(status) in e.value.reason


async def test_handler_failure_is_a_500_the_client_retries(pki):
    handler = Recorder(fail=RuntimeError("the BSN 123456782 leaked"))
    async with running(pki, handler) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        with pytest.raises(As2Temporary) as e:
            await post(client)
        await client.close()
    assert (e.value.status, e.value.remote_reply) == (500, "internal error")


async def test_connection_refused_is_temporary(pki):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    client = As2Client(pki.settings(), pki.partner(f"https://{HOST}:{port}/as2"))
    with pytest.raises(As2Temporary, match="could not connect"):
        await post(client)
    await client.close()


async def test_a_tls_front_whose_service_is_down_is_temporary_not_a_refusal(pki):
    """A TLS terminator that completes the handshake (our certificate accepted) and then hangs up, because
    what stands behind it is down, is an outage: retried later, not held as a certificate refusal. The
    control: the same terminator refusing a foreign client certificate is still a refusal."""
    ctx = server_context(server_cert_chain_pem=pki.server.chain_pem, server_key_pem=pki.server.key_pem,
                         client_ca_pem=pki.ca.pem)
    connections = []

    async def backend_down(reader, writer):
        connections.append(writer.get_extra_info("peercert") is not None)
        writer.close()

    server = await asyncio.start_server(backend_down, HOST, 0, ssl=ctx)
    try:
        url = f"https://{HOST}:{server.sockets[0].getsockname()[1]}/as2"
        client = As2Client(pki.settings(), pki.partner(url))
        with pytest.raises(As2Temporary, match="closed the connection without an answer"):
            await post(client)
        await client.close()
        assert connections and all(connections)  # every connection was accepted with our certificate
        foreign = As2Client(pki.settings(client=pki.foreign_client), pki.partner(url))
        with pytest.raises(As2Security, match="refused our client certificate"):
            await post(foreign)
        await foreign.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_is_a_timeout(pki):
    ctx = server_context(server_cert_chain_pem=pki.server.chain_pem, server_key_pem=pki.server.key_pem,
                         client_ca_pem=pki.ca.pem)
    got, writers = [], []

    async def silent(reader, writer):
        writers.append(writer)
        got.append(await reader.read(100))  # takes the request, never answers

    server = await asyncio.start_server(silent, HOST, 0, ssl=ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        client = As2Client(pki.settings(timeout=0.5), pki.partner(f"https://{HOST}:{port}/as2"))
        started = time.monotonic()
        with pytest.raises(As2Temporary, match="no answer from the partner within 0.5 s"):
            await post(client)
        assert time.monotonic() - started < 3
        await client.close()
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
    assert got and got[0].startswith(b"POST /as2 HTTP/1.1")


async def test_a_response_over_the_limit_is_temporary(pki):
    async with running(pki, Recorder(As2Reply(mdn_entity=MDN + b"x" * 5000))) as srv:
        client = As2Client(pki.settings(max_response_bytes=4000), pki.partner(srv.url()))
        with pytest.raises(As2Temporary, match="larger than 4000 bytes"):
            await post(client)
        await client.close()


# -- what the server refuses ----------------------------------------------------------------------

async def test_body_over_the_limit_is_413(pki):
    handler = Recorder()

    async def chunks():
        for _ in range(10):
            yield b"M" * 1000

    async with running(pki, handler, max_body=5000) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        with pytest.raises(As2Permanent) as e:  # Content-Length says it at once
            await post(client, body=b"\x30" * 6000)
        await client.close()
        status, _, body = await raw_post(srv.url(), pki, headers=AS2_HEADERS, data=chunks())  # chunked: counted
        assert (status, body) == (413, b"the body is larger than 5000 bytes\n")
    assert e.value.status == 413
    assert handler.seen == []


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in AS2_HEADERS.items() if k != name}


@pytest.mark.parametrize("method, headers, data, status, reason", [
    ("POST", _without("AS2-From"), DER, 400, b"AS2-From and AS2-To are required"),
    ("POST", _without("AS2-To"), DER, 400, b"AS2-From and AS2-To are required"),
    ("POST", {**AS2_HEADERS, "AS2-From": "x" * 129}, DER, 400, b"AS2-From and AS2-To are required"),
    ("POST", {**AS2_HEADERS, "AS2-To": "SOMEONE-ELSE"}, DER, 400, b"AS2-To names no party served here"),
    ("POST", {**AS2_HEADERS, "Content-Type": ""}, DER, 400, b"Content-Type is required"),
    ("POST", AS2_HEADERS, b"", 400, b"the body is empty"),
    ("POST", {**AS2_HEADERS, "Content-Transfer-Encoding": "base64"}, b"MII*not base64*", 400,
     b"the body is not valid base64"),
    ("POST", {**AS2_HEADERS, "Content-Encoding": "gzip"}, DER, 415, b"Content-Encoding is not supported"),
    ("GET", AS2_HEADERS, b"", 405, b"only POST is accepted"),
    ("PUT", AS2_HEADERS, DER, 405, b"only POST is accepted"),
])
async def test_malformed_requests_are_refused_with_a_short_reason(pki, method, headers, data, status, reason):
    handler = Recorder()
    async with running(pki, handler, own_names={"PLATFORM"}) as srv:
        got, hdrs, body = await raw_post(srv.url(), pki, headers=headers, data=data, method=method)
    assert (got, body.startswith(reason)) == (status, True), body
    if status == 405:
        assert hdrs["Allow"] == "POST"
    assert handler.seen == []


async def test_an_mdn_posted_without_an_mdn_handler_is_415(pki):
    headers = {k: v for k, v in AS2_HEADERS.items() if not k.startswith("Disposition")}
    ctype, _, body = MDN.partition(b"\r\n\r\n")
    headers["Content-Type"] = ctype.split(b": ", 1)[1].decode()
    handler = Recorder()
    async with running(pki, handler) as srv:
        status, _, text = await raw_post(srv.url(), pki, headers=headers, data=body)
    assert (status, text) == (415, b"receipts are not accepted at this URL\n")
    assert handler.seen == []


# -- what peers send ------------------------------------------------------------------------------

async def test_base64_binary_and_chunked_bodies_reach_the_handler_as_the_same_bytes(pki):
    handler = Recorder()
    b64 = encode_base64(DER)

    async def chunked():
        for i in range(0, len(DER), 100):
            yield DER[i:i + 100]

    async with running(pki, handler) as srv:
        for encoding in ("base64", "binary"):
            client = As2Client(pki.settings(body_encoding=encoding), pki.partner(srv.url()))
            await post(client, body=b64, encoding="base64")
            await post(client, body=DER, encoding="binary")
            await client.close()
        variants = [
            ({"Content-Transfer-Encoding": "base64"}, b64),
            ({}, b64),  # base64 without saying so
            ({}, b64.replace(b"\r\n", b"\n")),
            ({"Content-Transfer-Encoding": "binary"}, DER),
            ({"Content-Type": 'application/pkcs7-mime; smime-type="enveloped-data"; name="smime.p7m"'}, DER),
            ({"Content-Type": "application/x-pkcs7-mime; smime-type=enveloped-data"}, b64),
            ({"AS2-From": '"PI-VUGHT"', "AS2-To": '"PLATFORM"'}, DER),
            ({}, chunked()),  # Transfer-Encoding: chunked
        ]
        for extra, data in variants:
            status, _, _ = await raw_post(srv.url(), pki, headers={**AS2_HEADERS, **extra}, data=data)
            assert status == 200
    assert len(handler.seen) == 4 + len(variants)
    bodies = {req.body.partition(b"\r\n\r\n")[2] for req in handler.seen}
    assert bodies == {DER}
    assert {(r.as2_from, r.as2_to) for r in handler.seen} == {("PI-VUGHT", "PLATFORM")}
    assert handler.seen[-1].headers.get("Transfer-Encoding") == "chunked"
    assert [r.headers["Content-Transfer-Encoding"] for r in handler.seen[:4]] == ["base64", "base64", "binary",
                                                                                   "binary"]


async def test_an_idle_connection_closed_by_the_server_is_retried_transparently(pki):
    handler = Recorder()
    runner = await serve(make_app(handler), host=HOST, port=0, server_cert_chain_pem=pki.server.chain_pem,
                         server_key_pem=pki.server.key_pem, client_ca_pem=pki.ca.pem, header_timeout=0.2)
    try:
        client = As2Client(pki.settings(), pki.partner(runner.url()))
        await post(client)
        await asyncio.sleep(0.5)  # the server closes the idle kept-alive connection
        assert (await post(client)).status == 200
        await client.close()
    finally:
        await runner.close()
    assert len(handler.seen) == 2


# -- asynchronous MDNs ----------------------------------------------------------------------------

async def test_async_mdn_is_posted_to_the_receipt_url_with_retries(pki):
    receipts: asyncio.Queue = asyncio.Queue()
    failures = [RuntimeError("first delivery fails")]

    async def take_receipt(req):
        if failures:
            raise failures.pop()
        await receipts.put(req)

    handler = Recorder()
    mdn_identity = pki.ca.issue("PLATFORM as2 client", serial="PLATFORM")
    async_mdn = AsyncMdnSettings(client_cert_chain_pem=mdn_identity.chain_pem, client_key_pem=mdn_identity.key_pem,
                                 trust_pem=pki.ca.pem, retry_delays=(0.05, 0.05))
    async with running(pki, Recorder(), mdn_handler=take_receipt) as receipt_server, \
            running(pki, handler, async_mdn=async_mdn) as srv:
        client = As2Client(pki.settings(async_mdn_url=receipt_server.url()), pki.partner(srv.url()))
        started = time.monotonic()
        resp = await post(client)
        assert (resp.status, resp.mdn_entity) == (200, None)
        mdn = await asyncio.wait_for(receipts.get(), 5)
        await client.close()
    assert time.monotonic() - started < 3
    assert handler.seen[0].async_mdn_url == receipt_server.url()
    assert mdn.is_mdn and mdn.body == MDN
    assert (mdn.as2_from, mdn.as2_to) == ("PLATFORM", "PI-VUGHT")
    assert mdn.peer_certificate == mdn_identity.cert
    assert failures == []  # the first attempt failed (500) and was retried


async def test_async_mdn_to_a_url_that_is_not_https_is_answered_synchronously(pki):
    mdn_identity = pki.ca.issue("PLATFORM as2 client")
    async_mdn = AsyncMdnSettings(client_cert_chain_pem=mdn_identity.chain_pem, client_key_pem=mdn_identity.key_pem,
                                 trust_pem=pki.ca.pem)
    async with running(pki, Recorder(), async_mdn=async_mdn) as srv:
        status, hdrs, body = await raw_post(srv.url(), pki, data=DER,
                                            headers={**AS2_HEADERS, "Receipt-Delivery-Option": "mailto:x@y.example"})
    assert status == 200 and hdrs["Content-Type"].startswith("multipart/signed")
    assert entity_of(hdrs["Content-Type"], body) == MDN
    assert (hdrs["AS2-From"], hdrs["AS2-To"], hdrs["AS2-Version"]) == ("PLATFORM", "PI-VUGHT", "1.2")


# -- slow clients ---------------------------------------------------------------------------------

def _client_ctx(pki: TlsPki) -> ssl.SSLContext:
    from adapters.as2.tls import client_context
    return client_context(server_trust_pem=pki.ca.pem, client_cert_chain_pem=pki.client.chain_pem,
                          client_key_pem=pki.client.key_pem)


async def test_slow_clients_are_cut_off(pki):
    handler = Recorder()
    app = make_app(handler, body_idle_timeout=0.3)
    runner = await serve(app, host=HOST, port=0, server_cert_chain_pem=pki.server.chain_pem,
                         server_key_pem=pki.server.key_pem, client_ca_pem=pki.ca.pem,
                         header_timeout=0.3, handshake_timeout=0.3)
    try:
        # no TLS handshake at all
        reader, writer = await asyncio.open_connection(HOST, runner.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - started < 2
        writer.close()
        # half a request head
        reader, writer = await asyncio.open_connection(HOST, runner.port, ssl=_client_ctx(pki))
        writer.write(b"POST /as2 HTTP/1.1\r\nHost: x\r\nAS2-From: PI-VUGHT\r\n")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - started < 2
        writer.close()
        # headers, then part of the body, then nothing
        reader, writer = await asyncio.open_connection(HOST, runner.port, ssl=_client_ctx(pki))
        head = "".join(f"{k}: {v}\r\n" for k, v in AS2_HEADERS.items())
        writer.write(f"POST /as2 HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 1000\r\n\r\n".encode() + DER[:100])
        answer = await asyncio.wait_for(reader.readuntil(b"too slowly\n"), 3)  # then aiohttp lingers, closes
        assert answer.startswith(b"HTTP/1.1 408 ") and b"\r\nConnection: close\r\n" in answer
        writer.close()
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        await runner.close()
    assert handler.seen == []


async def test_a_connection_closed_without_an_answer_is_retried_once_then_temporary(pki):
    """A hand-written TLS peer that hangs up after reading the request: on `close_first` connections."""
    ctx = server_context(server_cert_chain_pem=pki.server.chain_pem, server_key_pem=pki.server.key_pem,
                         client_ca_pem=pki.ca.pem)
    requests, writers = [], []
    close_first = 1

    async def peer(reader, writer):
        writers.append(writer)
        data = await reader.read(65536)
        requests.append(data)
        if len(requests) > close_first:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(peer, HOST, 0, ssl=ctx)
    try:
        url = f"https://{HOST}:{server.sockets[0].getsockname()[1]}/as2"
        client = As2Client(pki.settings(), pki.partner(url))
        resp = await post(client)
        assert (resp.status, resp.mdn_entity, len(requests)) == (200, None, 2)
        assert all(b"\r\nMessage-ID: <m-1@pi-vught>\r\n" in r for r in requests)  # the retry is the same message
        close_first = 100
        started = time.monotonic()
        with pytest.raises(As2Temporary, match="closed the connection without an answer"):
            await post(client)
        # two attempts, then a handshake without a request that the peer leaves waiting (so TLS is fine)
        assert len(requests) == 4 and len(writers) == 5 and time.monotonic() - started < 3
        await client.close()
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_values_that_could_break_a_header_are_refused_before_sending(pki):
    handler = Recorder()
    async with running(pki, handler) as srv:
        client = As2Client(pki.settings(), pki.partner(srv.url()))
        for kw in ({"subject": "x\r\nAS2-To: SOMEONE-ELSE"}, {"message_id": "a b"}, {"message_id": "a>\r\nX: y"},
                   {"content_type": "application/pkcs7-mime\r\nX: y"}, {"body": b""}):
            args = dict(message_id="m-1", body=DER, content_type=SMIME, subject="s", transfer_encoding="binary")
            with pytest.raises(ValueError):
                await client.post(**{**args, **kw})
        await client.close()
    assert handler.seen == []
    for bad in ({"async_mdn_url": "http://127.0.0.1/receipts"}, {"as2_from": "x" * 129}, {"receipt_to": "a\r\nb"},
                {"body_encoding": "quoted-printable"}, {"timeout": 0}):
        with pytest.raises(ValueError):
            pki.settings(**bad)
