"""The service endpoints: `/v1/services`, start, list and stop services, and forward requests
to one (`/v1/services/{id}/http/{path}`)."""

from __future__ import annotations

from enclave.http_handler import (
    RUN_ID,
    Params,
    Query,
    RequestHandler,
    check_entrypoint,
    credentials_field,
)
from enclave.paths import split_relative
from enclave.routes import ApiError
from enclave.service_records import RUNTIME_ERROR_HEADER, Service, ServiceError, ServiceRequest
from enclave.services import ServiceManager


class ServiceEndpoints(RequestHandler):
    def _service_manager(self) -> ServiceManager:
        if self.server.services is None:
            raise ApiError(503, "services_unavailable", "this runtime serves no services")
        return self.server.services

    def _service(self, params: Params) -> Service:
        service_id = params["id"]
        manager = self._service_manager()
        service = manager.get(service_id) if RUN_ID.fullmatch(service_id) else None
        if service is None:
            raise ApiError(404, "not_found",
                           f"no service {service_id!r}; list services with GET /v1/services")
        return service

    def _service_start(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        body = self._json_body({
            "bundle": (str, True),
            "entrypoint": (str, True),
            "credentials": (dict, False),
        })
        split_relative(body["bundle"])
        check_entrypoint(body["entrypoint"], "serve")
        service = self._service_manager().start(ServiceRequest(
            bundle="/".join(split_relative(body["bundle"])),
            entrypoint=body["entrypoint"],
            credentials=credentials_field(body["credentials"]),
        ))
        self._send_json(202, {"id": service.id, "state": service.state})

    def _service_list(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        services = self._service_manager().list()
        self._send_json(200, {"services": [service.view() for service in services]})

    def _service_get(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, self._service(params).view())

    def _service_stop(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        service = self._service(params)
        self._service_manager().stop(service.id)
        self._send_json(200, service.view())

    def _service_http(self, params: Params, query: Query) -> None:
        """Forward one request to the service: its path and query as sent, its body as is.

        An error the runtime gives itself carries RUNTIME_ERROR_HEADER, which a service cannot
        set (only its status, Content-Type and body are passed on)."""
        try:
            self._forward(params)
        except (ApiError, ServiceError) as exc:
            self._close_if_body_unread()
            self._send_error(exc.status, exc.code, exc.message, {RUNTIME_ERROR_HEADER: exc.code})

    def _forward(self, params: Params) -> None:
        service = self._service(params)
        spec = service.spec
        limit = spec.max_request_bytes if spec is not None else 0
        length = self._content_length() or 0
        if length > limit:
            # A small refused body is read away (the client may still be sending it), a large
            # one ends the connection: the runtime never buffers what the manifest refuses.
            service.count(served=False, error="request too large")
            raise ApiError(413, "request_too_large",
                           f"the request body is {length} bytes; the service's manifest "
                           f"allows {limit}")
        body = self.rfile.read(length) if length else b""
        self._body_pending = False
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, "bad_request", "the body ended before Content-Length bytes")
        prefix = f"/v1/services/{service.id}/http"
        target = self.path[len(prefix):]
        if not target.startswith("/"):
            target = "/" + target
        headers = {name: value for name in ("Content-Type", "Accept")
                   if (value := self.headers.get(name)) is not None}
        answer = self._service_manager().forward(service.id, self.command, target, headers, body)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)
