"""The simulated Nitro Secure Module: the real CBOR protocol on a Unix socket.

Requests and responses are byte-for-byte the real NSM's (`enclave/nsm.py` is the client): one
request per connection, the client shuts down its write side, the server answers and closes.
Attestation documents are real-format COSE_Sign1 (ES384, protected header {1: -35}, payload map
with module_id, digest, timestamp, pcrs, certificate, cabundle, public_key, user_data, nonce),
signed by the development chain of `client/sim/pki.py`. PCRs come from `client/sim/measure.py`.

    python -m client.sim.nsm --socket PATH --state DIR [--debug] [--project-root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from client.sim import pki as sim_pki
from client.sim.measure import simulated_pcrs
from enclave.nsm import NONCE_MAX, NSM_REQUEST_MAX, PUBLIC_KEY_MAX, USER_DATA_MAX

PROTECTED_ES384 = cbor2.dumps({1: -35})
RANDOM_BYTES_PER_CALL = 256
CONNECTION_TIMEOUT_SECONDS = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def module_id_for(state_dir: Path) -> str:
    tag = hashlib.sha256(os.fsencode(Path(state_dir).resolve())).hexdigest()
    return f"i-0sim{tag[:12]}-enc{tag[12:28]}"


def _encode_map(items: Sequence[tuple[Any, Any]], *, indefinite: bool) -> bytes:
    if not indefinite:
        return cbor2.dumps(dict(items))
    # an indefinite-length map (0xbf ... 0xff), as some NSM versions send
    return b"\xbf" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in items) + b"\xff"


def build_attestation_document(pki: sim_pki.DevelopmentPki, *, pcrs: Mapping[int, bytes],
                               module_id: str, user_data: bytes | None = None,
                               nonce: bytes | None = None, public_key: bytes | None = None,
                               timestamp_ms: int | None = None,
                               indefinite: bool = False) -> bytes:
    """A COSE_Sign1 attestation document in the real layout, signed by the development leaf."""
    payload = _encode_map([
        ("module_id", module_id),
        ("digest", "SHA384"),
        ("timestamp", timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)),
        ("pcrs", {index: pcrs[index] for index in sorted(pcrs)}),
        ("certificate", pki.leaf_der()),
        ("cabundle", pki.cabundle()),
        ("public_key", public_key),
        ("user_data", user_data),
        ("nonce", nonce),
    ], indefinite=indefinite)
    to_sign = cbor2.dumps(["Signature1", PROTECTED_ES384, b"", payload])
    r, s = decode_dss_signature(pki.leaf_key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return cbor2.dumps([PROTECTED_ES384, {}, payload, signature])


class SimulatedNsm:
    """Answers NSM requests; `handle(request_bytes) -> response_bytes` is the whole protocol."""

    def __init__(self, *, state_dir: Path, pcrs: Mapping[int, bytes], debug: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.debug = debug
        self.pcrs = {i: bytes(48) for i in pcrs} if debug else dict(pcrs)
        self.module_id = module_id_for(self.state_dir)

    def handle(self, request: bytes) -> bytes:
        try:
            reply = self._dispatch(cbor2.loads(request))
        except Exception:  # any malformed request gets the NSM's own answer, never a traceback
            reply = {"Error": "InvalidArgument"}
        return cbor2.dumps(reply)

    def _dispatch(self, request: Any) -> dict[str, Any]:
        # argument-less operations are bare strings, as on the device; their map forms are refused
        if request == "GetRandom":
            return {"GetRandom": {"random": os.urandom(RANDOM_BYTES_PER_CALL)}}
        if request == "DescribeNSM":
            return {"DescribeNSM": {
                "version_major": 1, "version_minor": 0, "version_patch": 0,
                "module_id": self.module_id, "max_pcrs": 32,
                "locked_pcrs": sorted(self.pcrs), "digest": "SHA384"}}
        if not isinstance(request, dict) or len(request) != 1:
            return {"Error": "InvalidOperation"}
        ((operation, body),) = request.items()
        if operation == "DescribePCR":
            index = body.get("index") if isinstance(body, dict) else None
            if not isinstance(index, int) or not 0 <= index < 32:
                return {"Error": "InvalidIndex"}
            return {"DescribePCR": {"lock": index in self.pcrs,
                                    "data": self.pcrs.get(index, bytes(48))}}
        if operation == "Attestation":
            return self._attestation(body)
        return {"Error": "InvalidOperation"}

    def _attestation(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            return {"Error": "InvalidArgument"}
        fields: dict[str, bytes | None] = {}
        for name, limit in (("user_data", USER_DATA_MAX), ("nonce", NONCE_MAX),
                            ("public_key", PUBLIC_KEY_MAX)):
            value = body.get(name)
            if value is not None and not isinstance(value, bytes):
                return {"Error": "InvalidArgument"}
            if value is not None and len(value) > limit:
                return {"Error": "InputTooLarge"}
            fields[name] = value
        pki = sim_pki.load_or_create(self.state_dir)
        document = build_attestation_document(
            pki, pcrs=self.pcrs, module_id=self.module_id, user_data=fields["user_data"],
            nonce=fields["nonce"], public_key=fields["public_key"])
        return {"Attestation": {"document": document}}


def _read_request(conn: socket.socket) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > NSM_REQUEST_MAX:
            return None
        chunks.append(chunk)


def serve_nsm(sock: socket.socket, *, state_dir: Path, pcrs: Mapping[int, bytes],
              debug: bool = False, stop: threading.Event | None = None) -> None:
    """Serve the NSM protocol on an already-listening socket until `stop` is set or it closes."""
    nsm = SimulatedNsm(state_dir=state_dir, pcrs=pcrs, debug=debug)
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            ready, _, _ = select.select([sock], [], [], 0.2)
        except (OSError, ValueError):
            return  # the listening socket was closed
        if not ready:
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(CONNECTION_TIMEOUT_SECONDS)
            try:
                request = _read_request(conn)
                reply = (cbor2.dumps({"Error": "InputTooLarge"}) if request is None
                         else nsm.handle(request))
                conn.sendall(reply)
            except OSError:
                continue  # a client that vanished or stalled does not stop the server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.sim.nsm",
                                     description="Simulated Nitro Secure Module on a Unix socket.")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--state", required=True, help="simulation state directory (pki/)")
    parser.add_argument("--debug", action="store_true", help="debug mode: every PCR is zero")
    parser.add_argument("--project-root", default=str(PROJECT_ROOT),
                        help="where enclave/ and containers/ are measured from")
    parser.add_argument("--policy", required=True,
                        help="the image policy file the simulated image carries (measured)")
    args = parser.parse_args(argv)
    state = Path(args.state)
    sim_pki.load_or_create(state)
    pcrs = simulated_pcrs(Path(args.project_root), policy=Path(args.policy).read_bytes(),
                          debug=args.debug)
    path = Path(args.socket)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    print(f"simulated NSM on {path} (PCR0 {pcrs[0].hex()})", flush=True)
    try:
        serve_nsm(sock, state_dir=state, pcrs=pcrs, debug=args.debug)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
