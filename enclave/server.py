"""The runtime's HTTP/1.1 API (docs/ARCHITECTURE.md "Runtime HTTP API", schema `openapi.yaml`),
put together: `make_server(sock)` serves it on an already-bound socket.

Its parts, one idea each: `enclave/connections.py` (connection limits, head deadline, the
listening socket), `enclave/routes.py` (the route table, 404/405), `enclave/http_handler.py`
(framing, limits on requests, JSON bodies and answers), and the endpoints:
`enclave/endpoints_status.py` (health, attestation, logs), `enclave/endpoints_exchange.py`
(inbox and outbox), `enclave/endpoints_runs.py`, `enclave/endpoints_services.py`.
"""

from __future__ import annotations

import socket
from typing import Any

from enclave.attested_kms import AttestationSource
from enclave.config import RuntimeConfig
from enclave.connections import RuntimeServer
from enclave.endpoints_exchange import ExchangeEndpoints
from enclave.endpoints_runs import RunEndpoints
from enclave.endpoints_services import ServiceEndpoints
from enclave.endpoints_status import StatusEndpoints
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.kms_wiring import KeyProviderFactory, attested_kms_key_provider_factory
from enclave.runner import Runner, Unseal, _default_unseal
from enclave.services import ServiceManager


class Handler(StatusEndpoints, ExchangeEndpoints, RunEndpoints, ServiceEndpoints):
    """Every endpoint of `enclave.routes.ROUTES`, on one connection."""


def make_server(
    sock: socket.socket,
    *,
    config: RuntimeConfig,
    nsm: AttestationSource | None = None,
    key_provider_factory: KeyProviderFactory | None = None,
    unseal: Unseal | None = None,
    events: EventLog | None = None,
) -> RuntimeServer:
    """The runtime server on an already-bound stream socket (AF_VSOCK or AF_UNIX).

    `nsm` is the attestation device (`enclave.nsm.NsmClient`, or a simulated one); the key
    provider factory defaults to attested KMS Decrypt with that NSM. Tests inject fakes.
    """
    events = events or EventLog()
    exchange = ExchangeArea(config.exchange_root)
    factory = key_provider_factory or attested_kms_key_provider_factory(config, nsm)
    runner_kwargs: dict[str, Any] = {"key_provider_factory": factory}
    if unseal is not None:
        runner_kwargs["unseal"] = unseal
    runner = Runner(config, exchange, events, **runner_kwargs)
    services = ServiceManager(config, exchange, events, users=runner.users,
                              key_provider_factory=factory,
                              unseal=unseal if unseal is not None else _default_unseal)
    server = RuntimeServer(sock, Handler, config=config, exchange=exchange, runner=runner,
                           events=events, nsm=nsm, services=services)
    events.add(f"runtime {config.version} serving")
    return server


__all__ = ["Handler", "make_server"]
