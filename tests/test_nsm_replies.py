"""What the runtime's NSM client (enclave/nsm.py) makes of replies a device should never send,
served here by a one-reply-per-connection Unix socket, the simulation's transport."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from enclave.nsm import NSM_RESPONSE_MAX, NsmClient, NsmError


class Replies:
    """A Unix socket answering each request with the next of `replies`; keeps the requests."""

    def __init__(self, path: Path) -> None:
        self.replies: list[bytes] = []
        self.requests: list[object] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while chunk := connection.recv(65536):
                    data += chunk
                self.requests.append(cbor2.loads(data))
                connection.sendall(self.replies.pop(0))


@pytest.fixture
def device(tmp_path) -> Iterator[tuple[NsmClient, Replies]]:
    path = tmp_path / "nsm.sock"
    replies = Replies(path)
    yield NsmClient.simulated(path), replies
    replies.listener.close()


def test_a_reply_that_is_not_cbor_is_an_invalid_response(device):
    client, replies = device
    replies.replies.append(b"\xff\xff")
    with pytest.raises(NsmError, match="NSM reply is not CBOR") as caught:
        client.describe()
    assert caught.value.code == "InvalidResponse"


def test_a_reply_for_another_operation_is_an_invalid_response(device):
    client, replies = device
    replies.replies.append(cbor2.dumps({"DescribeNSM": {}}))
    with pytest.raises(NsmError, match="reply to Attestation has no Attestation body"):
        client.attestation(nonce=b"n")


def test_an_attestation_reply_without_a_document_is_refused(device):
    client, replies = device
    replies.replies.append(cbor2.dumps({"Attestation": {"document": "text"}}))
    with pytest.raises(NsmError, match="carries no document"):
        client.attestation(user_data=b"u", public_key=b"k")
    assert replies.requests == [{"Attestation": {"user_data": b"u", "nonce": None,
                                                 "public_key": b"k"}}]


def test_a_describe_reply_that_is_not_a_map_is_refused(device):
    client, replies = device
    replies.replies.append(cbor2.dumps({"DescribeNSM": [1, 2]}))
    with pytest.raises(NsmError, match="DescribeNSM reply is not a map"):
        client.describe()


def test_random_bytes_are_collected_across_replies_and_an_empty_one_is_refused(device):
    client, replies = device
    replies.replies += [cbor2.dumps({"GetRandom": {"random": bytes([n]) * 40}}) for n in (1, 2)]
    assert client.get_random(50) == b"\x01" * 40 + b"\x02" * 10
    replies.replies.append(cbor2.dumps({"GetRandom": {"random": b""}}))
    with pytest.raises(NsmError, match="carries no random bytes"):
        client.get_random(1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        client.get_random(-1)
    assert client.get_random(0) == b""


def test_a_reply_larger_than_the_device_buffer_is_refused(device):
    client, replies = device
    replies.replies.append(cbor2.dumps({"DescribeNSM": {"pad": bytes(NSM_RESPONSE_MAX)}}))
    with pytest.raises(NsmError, match=f"exceeds {NSM_RESPONSE_MAX} bytes"):
        client.describe()


def test_a_socket_nobody_serves_is_a_device_error_that_names_the_simulation(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file, but no one listens
    try:
        with pytest.raises(NsmError, match="is `python -m client.sim.nsm` running") as caught:
            NsmClient.simulated(path).describe()
        assert caught.value.code == "DeviceError"
    finally:
        stale.close()
