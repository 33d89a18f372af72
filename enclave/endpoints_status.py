"""The status endpoints: health, attestation documents and the event log; `attest` is shared
with the run receipts."""

from __future__ import annotations

import base64

from enclave.connections import RuntimeServer
from enclave.http_handler import Params, Query, RequestHandler, hex_field
from enclave.isolation import isolation_mode
from enclave.receipt import HOST_USER_DATA_MAX_BYTES, host_user_data
from enclave.routes import ApiError

NONCE_MAX_BYTES = 512


class StatusEndpoints(RequestHandler):
    def _health(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        runner = self.server.runner
        policy = runner.policy
        self._send_json(200, {
            "status": "ok", "version": self.server.config.version,
            "isolation": isolation_mode(),
            "image_policy": policy.to_json() if policy is not None else None,
        })

    def _attestation(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        body = self._json_body({"nonce": (str, True), "user_data": (str, False)})
        nonce = hex_field(body["nonce"], "nonce", NONCE_MAX_BYTES)
        user_data = None
        if body["user_data"] is not None:
            # Tagged as the host's, so it can never equal a run receipt's binding.
            user_data = host_user_data(
                hex_field(body["user_data"], "user_data", HOST_USER_DATA_MAX_BYTES))
        self._send_json(200, {"document": attest(self.server, nonce=nonce, user_data=user_data)})

    def _logs(self, params: Params, query: Query) -> None:
        self._only_query(query, {"since"})
        self._no_body()
        since = query.get("since", "0")
        if not since.isdigit() or len(since) > 18:
            raise ApiError(400, "bad_query", "since must be a non-negative integer")
        self._send_json(200, self.server.events.since(int(since)))


def attest(server: RuntimeServer, *, nonce: bytes, user_data: bytes | None) -> str:
    """An attestation document from the server's NSM, base64; `ApiError` 503/502 if none."""
    nsm = server.nsm
    if nsm is None:
        raise ApiError(503, "attestation_unavailable",
                       "this runtime has no NSM device configured (--nsm-device)")
    try:
        document = nsm.attestation(nonce=nonce, user_data=user_data)
    except Exception as exc:
        server.events.add(f"attestation failed: {exc.__class__.__name__}")
        detail = (str(exc) or exc.__class__.__name__)[:200]
        raise ApiError(502, "attestation_failed",
                       f"the NSM refused the attestation request ({detail}); "
                       "check the runtime's --nsm-device and retry") from exc
    server.events.add("attestation document issued")
    return base64.b64encode(document).decode("ascii")
