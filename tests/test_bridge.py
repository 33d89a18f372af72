"""The in-enclave KMS bridge: TCP on loopback in front, Unix sockets standing in for vsock."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.bridge import Bridge, pump
from tests.sim_support import short_socket_dir

KMS_HOST = "kms.us-east-1.amazonaws.com"


def unix_upstream(path: Path) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        return sock
    return connect


@contextlib.contextmanager
def upstream_server(path: Path, handle: Callable[[socket.socket], None]) -> Iterator[None]:
    """A Unix-socket server (the vsock-proxy's stand-in) running `handle` per connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: (handle(c), c.close()), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


@contextlib.contextmanager
def running_bridge(upstream: Callable[[], socket.socket], **kwargs) -> Iterator[Bridge]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    bridge = Bridge(listener, upstream, **kwargs)
    thread = threading.Thread(target=bridge.serve_forever, daemon=True)
    thread.start()
    try:
        yield bridge
    finally:
        bridge.close()
        thread.join(timeout=5)


def connect(bridge: Bridge) -> socket.socket:
    sock = socket.create_connection(bridge.listener.getsockname(), timeout=10)
    return sock


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_socket_dir() as directory:
        yield directory


def test_bytes_flow_both_ways_unchanged(sockets: Path) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, more than one chunk and one socket buffer
    with upstream_server(sockets / "proxy", echo), \
            running_bridge(unix_upstream(sockets / "proxy")) as bridge, connect(bridge) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        assert read_all(sock) == payload
        sender.join()


def test_half_close_lets_the_answer_come_back(sockets: Path) -> None:
    def answer_after_eof(conn: socket.socket) -> None:
        request = read_all(conn)
        conn.sendall(b"answer to " + request)

    with upstream_server(sockets / "proxy", answer_after_eof), \
            running_bridge(unix_upstream(sockets / "proxy")) as bridge, connect(bridge) as sock:
        sock.sendall(b"request")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"answer to request"


def test_concurrent_connections_are_kept_apart(sockets: Path) -> None:
    results: dict[int, bytes] = {}

    def client(i: int, bridge: Bridge) -> None:
        with connect(bridge) as sock:
            sock.sendall(f"client {i}".encode() * 1000)
            sock.shutdown(socket.SHUT_WR)
            results[i] = read_all(sock)

    with upstream_server(sockets / "proxy", echo), \
            running_bridge(unix_upstream(sockets / "proxy")) as bridge:
        threads = [threading.Thread(target=client, args=(i, bridge)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
    assert results == {i: f"client {i}".encode() * 1000 for i in range(8)}


def test_unreachable_proxy_closes_the_connection_and_the_bridge_keeps_serving(
        sockets: Path) -> None:
    with running_bridge(unix_upstream(sockets / "absent")) as bridge:
        for _ in range(2):
            with connect(bridge) as sock:
                assert read_all(sock) == b""
        assert bridge.upstream_failures == 2


def test_connections_over_the_limit_are_refused_at_once(sockets: Path) -> None:
    release = threading.Event()

    def hold(conn: socket.socket) -> None:
        release.wait(10)

    with upstream_server(sockets / "proxy", hold), \
            running_bridge(unix_upstream(sockets / "proxy"), max_connections=1) as bridge:
        with connect(bridge) as first:
            first.sendall(b"x")
            for _ in range(1000):  # until the first connection holds the only slot
                if bridge.connections_served:
                    break
                threading.Event().wait(0.01)
            assert bridge.connections_served == 1
            with connect(bridge) as second:
                assert read_all(second) == b""
        release.set()


def test_idle_connection_is_closed_after_the_timeout(sockets: Path) -> None:
    with upstream_server(sockets / "proxy", lambda c: threading.Event().wait(5)), \
            running_bridge(unix_upstream(sockets / "proxy"), idle_timeout=0.3) as bridge, \
            connect(bridge) as sock:
        sock.settimeout(5)
        assert read_all(sock) == b""


def test_pump_half_closes_the_sink_at_eof() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        a.sendall(b"data")
        a.shutdown(socket.SHUT_WR)
        pump(b, c)
        assert read_all(d) == b"data"


# ---- TLS runs end to end through the bridge ------------------------------------------------


def certificate_for(hostname: str, tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_upstream(sockets: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A TLS server for the KMS hostname behind the 'vsock-proxy' socket."""
    cert, key = certificate_for(KMS_HOST, tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def tls_echo(conn: socket.socket) -> None:
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello over TLS: " + tls.recv(100))
        except (ssl.SSLError, OSError):
            pass

    with upstream_server(sockets / "proxy", tls_echo):
        yield sockets / "proxy", cert


def test_tls_handshake_verifies_the_real_hostname_through_the_bridge(tls_upstream) -> None:
    proxy, cert = tls_upstream
    context = ssl.create_default_context(cafile=str(cert))
    with running_bridge(unix_upstream(proxy)) as bridge, connect(bridge) as raw, \
            context.wrap_socket(raw, server_hostname=KMS_HOST) as tls:
        tls.sendall(b"ping")
        assert tls.recv(100) == b"hello over TLS: ping"


def test_tls_to_another_hostname_fails_verification_through_the_bridge(tls_upstream) -> None:
    proxy, cert = tls_upstream
    context = ssl.create_default_context(cafile=str(cert))
    with running_bridge(unix_upstream(proxy)) as bridge, connect(bridge) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="kms.eu-west-1.amazonaws.com")


def test_forwarded_bytes_never_reach_the_logs(sockets: Path, caplog) -> None:
    secret = b"Authorization: AWS4-HMAC-SHA256 Credential=AKIASECRET/x SessionToken=SECRETTOKEN"
    caplog.set_level("DEBUG")
    with upstream_server(sockets / "proxy", echo), \
            running_bridge(unix_upstream(sockets / "proxy")) as bridge, connect(bridge) as sock:
        sock.sendall(secret)
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == secret
    with running_bridge(unix_upstream(sockets / "absent")) as bridge, connect(bridge) as sock, \
            contextlib.suppress(OSError):  # the bridge drops it, possibly with a reset
        sock.sendall(secret)
        read_all(sock)
    assert "SECRET" not in caplog.text
