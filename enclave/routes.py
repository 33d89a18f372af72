"""The runtime API's route table: which method and path reach which endpoint, or 404/405.

Pure: `match_route` decides on the method and the raw path alone. The table is the one
`enclave/openapi.yaml` describes (a test keeps them equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def headers(self) -> dict[str, str]:
        """Headers the error answer carries besides the JSON body."""
        return {}


class MethodNotAllowed(ApiError):
    """405: the path exists, under other methods; they are carried as data for `Allow`."""

    def __init__(self, method: str, raw_path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(405, "method_not_allowed",
                         f"{method} is not allowed on {raw_path}; allowed: {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}



@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: str

    @property
    def pattern(self) -> re.Pattern[str]:
        # `{path}` may be empty and span several segments; every other parameter is one segment.
        regex = re.escape(self.template)
        regex = regex.replace(re.escape("{path}"), "(?P<path>.*)")
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", regex)
        return re.compile(regex)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", "health"),
    Route("GET", "/v1/fs/{area}/{path}", "fs_get"),
    Route("PUT", "/v1/fs/{area}/{path}", "fs_put"),
    Route("POST", "/v1/fs/{area}/{path}", "fs_post"),
    Route("DELETE", "/v1/fs/{area}/{path}", "fs_delete"),
    Route("POST", "/v1/runs", "run_create"),
    Route("GET", "/v1/runs", "run_list"),
    Route("GET", "/v1/runs/{id}", "run_get"),
    Route("DELETE", "/v1/runs/{id}", "run_cancel"),
    Route("POST", "/v1/runs/{id}/receipt", "run_receipt"),
    Route("POST", "/v1/services", "service_start"),
    Route("GET", "/v1/services", "service_list"),
    Route("GET", "/v1/services/{id}", "service_get"),
    Route("DELETE", "/v1/services/{id}", "service_stop"),
    *(Route(method, "/v1/services/{id}/http/{path}", "service_http")
      for method in ("GET", "POST", "PUT", "DELETE")),
    Route("POST", "/v1/attestation", "attestation"),
    Route("GET", "/v1/logs", "logs"),
)
_COMPILED = [(route, route.pattern) for route in ROUTES]


def match_route(method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request, its parameters percent-decoded once; `ApiError` 404/405."""
    if raw_path.rstrip("/") in ("/v1/fs/inbox", "/v1/fs/outbox"):
        raw_path = raw_path.rstrip("/") + "/"  # the area root, listed or stat'ed
    allowed: list[str] = []
    for route, pattern in _COMPILED:
        found = pattern.fullmatch(raw_path)
        if found is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        try:
            params = {k: unquote(v, errors="strict") for k, v in found.groupdict().items()}
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_path", "the URL path is not valid percent-encoded UTF-8") \
                from exc
        return route, params
    if allowed:
        raise MethodNotAllowed(method, raw_path, tuple(allowed))
    raise ApiError(404, "not_found", f"no such endpoint: {method} {raw_path}; see openapi.yaml")
