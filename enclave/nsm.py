"""Client for the Nitro Secure Module: attestation documents, module description, randomness.

The real device is `/dev/nsm`, driven through the single raw ioctl of the kernel's uapi
`linux/nsm.h`:

    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };
    #define NSM_IOCTL_RAW _IOWR(0x0A, 0, struct nsm_raw)   /* = 0xC0200A00 */

The request is CBOR (at most 0x1000 bytes); the kernel writes the CBOR response (at most 0x3000
bytes) into the response buffer and its actual length back into `response.len`. This is done in
pure Python (ctypes buffers + fcntl.ioctl), so the enclave image carries no compiled helper.

Request shapes follow the NSM API's serde encoding: operations without arguments are bare CBOR
text strings ("DescribeNSM", "GetRandom"); the others are one-entry maps ({"Attestation": {...}},
{"DescribePCR": {"index": n}}). The device refuses `{"GetRandom": {}}` with InvalidOperation
(QEMU's virtio-nsm model, written against the device, matches on exactly these shapes).

The local simulation (`client/sim/nsm.py`) is reached only when asked for by configuration,
`NsmClient.simulated(socket_path)` (the runtime's `--nsm-transport simulation`), never by looking
at what the path is: a production client given a socket gets the device's error, not the
simulation. Over its Unix socket go the same CBOR request and response bytes, one request per
connection: the client sends the request, shuts down its write side, and reads the response until
the server closes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Literal

import cbor2

NSM_DEVICE = "/dev/nsm"
NSM_IOCTL_RAW = 0xC0200A00
NSM_REQUEST_MAX = 0x1000
NSM_RESPONSE_MAX = 0x3000
# two struct nsm_iovec {u64 addr; u64 len}; native byte order, as the kernel reads it
NSM_RAW_FORMAT = "=QQQQ"
NSM_RAW_SIZE = struct.calcsize(NSM_RAW_FORMAT)

USER_DATA_MAX = 512
NONCE_MAX = 512
PUBLIC_KEY_MAX = 1024
SIMULATION_TIMEOUT_SECONDS = 10.0

NsmTransport = Literal["device", "simulation"]
NSM_TRANSPORTS: tuple[NsmTransport, ...] = ("device", "simulation")


class NsmError(Exception):
    """The NSM refused a request (`code`, e.g. "InvalidArgument") or could not be reached."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or f"the NSM answered {code}")
        self.code = code


def ioctl_request_code(type_char: int = 0x0A, number: int = 0, size: int = NSM_RAW_SIZE) -> int:
    """Linux `_IOWR(type, nr, size)`: direction read|write (3) in bits 30-31, size in 16-29."""
    return (3 << 30) | (size << 16) | (type_char << 8) | number


def pack_nsm_raw(request_addr: int, request_len: int, response_addr: int,
                 response_len: int) -> bytes:
    """The bytes of `struct nsm_raw` for the given buffers."""
    return struct.pack(NSM_RAW_FORMAT, request_addr, request_len, response_addr, response_len)


def unpack_nsm_raw(raw: bytes) -> tuple[int, int, int, int]:
    """(request addr, request len, response addr, response len) from `struct nsm_raw` bytes."""
    return struct.unpack(NSM_RAW_FORMAT, raw)


def encode_request(request: Any) -> bytes:
    data = cbor2.dumps(request)
    if len(data) > NSM_REQUEST_MAX:
        raise NsmError("InputTooLarge", f"NSM request of {len(data)} bytes exceeds "
                                        f"{NSM_REQUEST_MAX}")
    return data


def decode_response(data: bytes, operation: str) -> Any:
    """The body of the `operation` reply, or `NsmError` for an `{"Error": code}` reply."""
    try:
        reply = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise NsmError("InvalidResponse", f"NSM reply is not CBOR: {exc}") from None
    if isinstance(reply, dict) and "Error" in reply:
        raise NsmError(str(reply["Error"]), f"the NSM refused {operation}: {reply['Error']}")
    if not isinstance(reply, dict) or operation not in reply:
        raise NsmError("InvalidResponse", f"NSM reply to {operation} has no {operation} body")
    return reply[operation]


class NsmClient:
    """`NsmClient()` talks to `/dev/nsm`; `NsmClient.simulated(socket)` to the simulation."""

    def __init__(self, device: str | os.PathLike[str] = NSM_DEVICE, *,
                 transport: NsmTransport = "device") -> None:
        if transport not in NSM_TRANSPORTS:
            raise ValueError(f"unknown NSM transport {transport!r}; expected one of "
                             f"{', '.join(NSM_TRANSPORTS)}")
        self.device = os.fspath(device)
        self.transport = transport
        self._send: Callable[[str, bytes], bytes] = (
            _call_socket if transport == "simulation" else _call_ioctl)

    @classmethod
    def simulated(cls, socket_path: str | os.PathLike[str]) -> NsmClient:
        """A client of the simulated NSM listening on `socket_path` (`client/sim/nsm.py`)."""
        return cls(socket_path, transport="simulation")

    def attestation(self, *, user_data: bytes | None = None, nonce: bytes | None = None,
                    public_key: bytes | None = None) -> bytes:
        """A signed attestation document (COSE_Sign1 bytes) binding the given fields."""
        for name, value, limit in (("user_data", user_data, USER_DATA_MAX),
                                   ("nonce", nonce, NONCE_MAX),
                                   ("public_key", public_key, PUBLIC_KEY_MAX)):
            if value is not None and len(value) > limit:
                # checked here so the caller gets a precise message rather than the NSM's bare code
                raise NsmError("InputTooLarge", f"attestation {name} is {len(value)} bytes; the "
                                                f"NSM accepts at most {limit}")
        body = decode_response(self.call({"Attestation": {
            "user_data": user_data, "nonce": nonce, "public_key": public_key}}), "Attestation")
        document = body.get("document") if isinstance(body, dict) else None
        if not isinstance(document, bytes):
            raise NsmError("InvalidResponse", "NSM attestation reply carries no document")
        return document

    def describe(self) -> dict[str, Any]:
        body = decode_response(self.call("DescribeNSM"), "DescribeNSM")
        if not isinstance(body, dict):
            raise NsmError("InvalidResponse", "DescribeNSM reply is not a map")
        return body

    def describe_pcr(self, index: int) -> tuple[bool, bytes]:
        """(locked, value) of PCR `index`."""
        body = decode_response(self.call({"DescribePCR": {"index": index}}), "DescribePCR")
        return bool(body["lock"]), bytes(body["data"])

    def get_random(self, n: int) -> bytes:
        """`n` bytes from the NSM's entropy source (it returns a bounded amount per call)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        out = bytearray()
        while len(out) < n:
            body = decode_response(self.call("GetRandom"), "GetRandom")
            chunk = body.get("random") if isinstance(body, dict) else None
            if not isinstance(chunk, bytes) or not chunk:
                raise NsmError("InvalidResponse", "GetRandom reply carries no random bytes")
            out += chunk
        return bytes(out[:n])

    def call(self, request: Any) -> bytes:
        """Send one CBOR request and return the raw CBOR response."""
        return self._send(self.device, encode_request(request))


def _call_ioctl(device: str, request: bytes) -> bytes:
    request_buffer = ctypes.create_string_buffer(request, len(request))
    response_buffer = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
    raw = bytearray(pack_nsm_raw(ctypes.addressof(request_buffer), len(request),
                                 ctypes.addressof(response_buffer), NSM_RESPONSE_MAX))
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise NsmError("DeviceError", f"cannot reach the NSM at {device}: {exc}; inside an "
                                      "enclave it is /dev/nsm (nsm driver)") from None
    try:
        # the kernel updates raw in place
        fcntl.ioctl(fd, NSM_IOCTL_RAW, raw, True)  # pragma: no cover - hardware
    except OSError as exc:
        raise NsmError("DeviceError", f"NSM ioctl on {device} failed: {exc}") from None
    finally:
        os.close(fd)
    response_len = unpack_nsm_raw(bytes(raw))[3]
    if response_len > NSM_RESPONSE_MAX:
        raise NsmError("InvalidResponse", f"NSM reported a {response_len}-byte response, more "
                                          f"than the {NSM_RESPONSE_MAX}-byte buffer")
    return response_buffer.raw[:response_len]


def _call_socket(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SIMULATION_TIMEOUT_SECONDS)
        try:
            sock.connect(path)
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            received = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
                if received > NSM_RESPONSE_MAX:
                    raise NsmError("InvalidResponse", "simulated NSM response exceeds "
                                                      f"{NSM_RESPONSE_MAX} bytes")
                chunks.append(chunk)
        except OSError as exc:
            raise NsmError("DeviceError", f"simulated NSM at {path} failed: {exc}; is "
                                          "`python -m client.sim.nsm` running?") from None
    return b"".join(chunks)
