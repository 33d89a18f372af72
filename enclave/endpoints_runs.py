"""The run endpoints: `/v1/runs`, start, list, follow and cancel runs, and their receipts."""

from __future__ import annotations

from enclave.endpoints_status import NONCE_MAX_BYTES, attest
from enclave.http_handler import (
    RUN_ID,
    Params,
    Query,
    RequestHandler,
    check_entrypoint,
    credentials_field,
    hex_field,
)
from enclave.paths import split_relative
from enclave.receipt import receipt_user_data
from enclave.routes import ApiError
from enclave.run_records import TERMINAL_STATES, Job, RunRequest

MAX_RUN_ARGS = 32
MAX_ARG_CHARS = 4096


class RunEndpoints(RequestHandler):
    def _run_create(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        body = self._json_body({
            "bundle": (str, True),
            "entrypoint": (str, True),
            "args": (list, False),
            "credentials": (dict, False),
        })
        split_relative(body["bundle"])
        check_entrypoint(body["entrypoint"], "predict")
        args = body["args"] or []
        if len(args) > MAX_RUN_ARGS or not all(
                isinstance(a, str) and len(a) <= MAX_ARG_CHARS for a in args):
            raise ApiError(400, "bad_field", f"args must be a list of at most {MAX_RUN_ARGS} "
                                             f"strings of at most {MAX_ARG_CHARS} characters")
        request = RunRequest(
            bundle="/".join(split_relative(body["bundle"])),
            entrypoint=body["entrypoint"],
            args=tuple(args),
            credentials=credentials_field(body["credentials"]),
        )
        job = self.server.runner.submit(request)
        self._send_json(202, {"id": job.id, "state": job.state})

    def _job(self, params: Params) -> Job:
        run_id = params["id"]
        job = self.server.runner.get(run_id) if RUN_ID.fullmatch(run_id) else None
        if job is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}; list runs with GET /v1/runs")
        return job

    def _run_list(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, {"runs": [job.view() for job in self.server.runner.list()]})

    def _run_get(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, self._job(params).view())

    def _run_cancel(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        self._no_body()
        job = self._job(params)
        if job.state in TERMINAL_STATES:
            raise ApiError(409, "run_finished", f"run {job.id} already ended ({job.state})")
        self.server.runner.cancel(job.id)
        self._send_json(202, job.view())

    def _run_receipt(self, params: Params, query: Query) -> None:
        self._only_query(query, set())
        body = self._json_body({"nonce": (str, True)})
        nonce = hex_field(body["nonce"], "nonce", NONCE_MAX_BYTES)
        job = self._job(params)
        if job.state not in TERMINAL_STATES:
            raise ApiError(409, "run_in_progress",
                           f"run {job.id} is still {job.state}; ask for a receipt once it ended")
        receipt = job.receipt()
        document = attest(self.server, nonce=nonce, user_data=receipt_user_data(receipt))
        self._send_json(200, {"document": document, "receipt": receipt})
