"""The sealed model as a service: `POST /predict` scores patients sent as JSON.

    python3 serve.py        (the runtime sets SEALED_SERVICE_SOCKET, a Unix socket path)

The model is loaded once; each request carries one patient or several:

    {"patient_id": "p1", "age": 52, "bmi": 31.2, ...}
    {"patients": [{...}, {...}], "threshold": 0.3}

and gets `{"predictions": [{"patient_id", "risk_probability", "high_risk"}]}`, the same numbers
`ml_inference.py` writes for the same rows. `GET /health` answers `{"status": "ok"}`. Standard
library only besides numpy (from the image, as for `predict`).
"""

from __future__ import annotations

import http.server
import json
import math
import os
import socketserver
import sys
from typing import Any

import numpy as np
from ml_inference import ID_COLUMN, load_model, probabilities

MAX_PATIENTS = 10_000


class RequestError(Exception):
    pass


def predict(model: dict, request: Any) -> dict:
    """The answer to one /predict body (already parsed JSON)."""
    if not isinstance(request, dict):
        raise RequestError("the body must be a JSON object")
    threshold = request.get("threshold", model["default_threshold"])
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0.0 < threshold < 1.0:
        raise RequestError("threshold must be a number between 0 and 1")
    patients = request["patients"] if "patients" in request else [request]
    if not isinstance(patients, list) or not 1 <= len(patients) <= MAX_PATIENTS:
        raise RequestError(f"patients must be a list of 1 to {MAX_PATIENTS} objects")
    features = model["features"]
    rows = []
    for index, patient in enumerate(patients):
        if not isinstance(patient, dict):
            raise RequestError(f"patient {index} is not an object")
        missing = [f for f in features if f not in patient]
        if missing:
            raise RequestError(f"patient {index} lacks {', '.join(missing)}")
        values = patient_values(patient, features, index)
        rows.append(values)
    scores = probabilities(model, np.asarray(rows, dtype=np.float64))
    return {"predictions": [
        {"patient_id": str(patient.get(ID_COLUMN, index)),
         "risk_probability": round(float(score), 4),
         "high_risk": int(score >= threshold)}
        for index, (patient, score) in enumerate(zip(patients, scores, strict=True))]}


def patient_values(patient: dict, features: list[str], index: int) -> list[float]:
    values = []
    for name in features:
        value = patient[name]
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise RequestError(f"patient {index}: {name} must be a finite number")
        values.append(float(value))
    return values


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model: dict = {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # no request log: it would only reach the enclave's console

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": "try POST /predict or GET /health"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/predict":
            self.answer(404, {"error": "try POST /predict"})
            return
        try:
            self.answer(200, predict(self.model, json.loads(body)))
        except ValueError:
            self.answer(400, {"error": "the body is not valid JSON"})
        except RequestError as exc:
            self.answer(400, {"error": str(exc)})

    def answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> int:
    path = os.environ.get("SEALED_SERVICE_SOCKET")
    if not path:
        print("serve.py: SEALED_SERVICE_SOCKET is not set; the runtime starts this service",
              file=sys.stderr)
        return 2
    Handler.model = load_model()
    with UnixHTTPServer(path, Handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
