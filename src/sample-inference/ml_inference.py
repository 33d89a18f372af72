"""Score patients for 5-year type 2 diabetes risk with the sealed model.

    python3 ml_inference.py INPUT.csv OUTPUT.csv [THRESHOLD]

INPUT has a header row with `patient_id` and the model's feature columns (any order, extra
columns ignored). OUTPUT gets `patient_id,risk_probability,high_risk` per input row. A short
summary goes to stdout (the manifest lets the host see it); the model itself never leaves the
enclave. Exit status: 0 ok, 2 unusable input (message on stderr).

numpy comes from the enclave image (containers/requirements-app.txt, installed into
/opt/enclave/site), not from the sealed bundle: the bundle carries only this program and the model.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).resolve().parent / "model.json"
ID_COLUMN = "patient_id"
MAX_ROWS = 5_000_000


class InputError(Exception):
    pass


def load_model(path: Path = MODEL_PATH) -> dict:
    model = json.loads(path.read_text())
    if model.get("model") != "logistic_regression":
        raise InputError(f"{path.name}: unsupported model type {model.get('model')!r}")
    return model


def probabilities(model: dict, features: np.ndarray) -> np.ndarray:
    """Risk for each row of `features` (rows x model features), vectorized."""
    z = model["intercept"] + ((features - np.asarray(model["means"]))
                              / np.asarray(model["scales"])) @ np.asarray(model["coefficients"])
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def risk(model: dict, values: list[float]) -> float:
    return float(probabilities(model, np.asarray([values], dtype=np.float64))[0])


def read_features(model: dict, source: Path) -> tuple[list[str], np.ndarray]:
    """(patient ids, feature matrix) of `source`, every value checked."""
    features = model["features"]
    ids: list[str] = []
    rows: list[list[float]] = []
    with source.open(newline="") as fin:
        reader = csv.DictReader(fin)
        header = reader.fieldnames or []
        missing = [c for c in (ID_COLUMN, *features) if c not in header]
        if missing:
            raise InputError(f"input lacks column(s) {', '.join(missing)}")
        for line, record in enumerate(reader, start=2):
            if len(rows) >= MAX_ROWS:
                raise InputError(f"input has more than {MAX_ROWS} rows")
            try:
                values = [float(record[f]) for f in features]
            except (TypeError, ValueError):
                raise InputError(f"line {line}: every feature must be a number") from None
            if not all(math.isfinite(v) for v in values):
                raise InputError(f"line {line}: features must be finite numbers")
            ids.append(record[ID_COLUMN])
            rows.append(values)
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(features))
    return ids, matrix


def score_file(model: dict, source: Path, target: Path, threshold: float) -> tuple[int, int]:
    """Write predictions for every row of `source`; return (rows, flagged)."""
    ids, matrix = read_features(model, source)
    scores = probabilities(model, matrix)
    high = scores >= threshold
    # Written aside and renamed when complete: a failed run leaves no half-written output.
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", newline="") as fout:
            writer = csv.writer(fout)
            writer.writerow([ID_COLUMN, "risk_probability", "high_risk"])
            for patient, probability, flagged in zip(ids, scores, high, strict=True):
                writer.writerow([patient, f"{probability:.4f}", int(flagged)])
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return len(ids), int(high.sum())


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: ml_inference.py INPUT.csv OUTPUT.csv [THRESHOLD]", file=sys.stderr)
        return 2
    try:
        model = load_model()
        threshold = float(argv[2]) if len(argv) == 3 else model["default_threshold"]
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {threshold}")
        rows, flagged = score_file(model, Path(argv[0]), Path(argv[1]), threshold)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    share = f" ({100 * flagged / rows:.1f}%)" if rows else ""
    print(f"scored {rows} patients: {flagged} at high risk{share}, threshold {threshold}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
