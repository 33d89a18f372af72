"""Score patients for 5-year type 2 diabetes risk with the sealed model.

    python3 ml_inference.py INPUT.csv OUTPUT.csv [THRESHOLD]

INPUT has a header row with `patient_id` and the model's feature columns (any order, extra
columns ignored). OUTPUT gets `patient_id,risk_probability,high_risk` per input row. A short
summary goes to stdout (the manifest lets the host see it); the model itself never leaves the
enclave. Exit status: 0 ok, 2 unusable input (message on stderr).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

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


def risk(model: dict, values: list[float]) -> float:
    z = model["intercept"]
    for x, mean, scale, coefficient in zip(
        values, model["means"], model["scales"], model["coefficients"], strict=True
    ):
        z += coefficient * (x - mean) / scale
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def score_file(model: dict, source: Path, target: Path, threshold: float) -> tuple[int, int]:
    """Write predictions for every row of `source`; return (rows, flagged)."""
    features = model["features"]
    rows = flagged = 0
    with source.open(newline="") as fin:
        reader = csv.DictReader(fin)
        header = reader.fieldnames or []
        missing = [c for c in (ID_COLUMN, *features) if c not in header]
        if missing:
            raise InputError(f"input lacks column(s) {', '.join(missing)}")
        # Written aside and renamed when complete: a failed run leaves no half-written output.
        partial = target.with_name(f".{target.name}.partial")
        try:
            with partial.open("w", newline="") as fout:
                writer = csv.writer(fout)
                writer.writerow([ID_COLUMN, "risk_probability", "high_risk"])
                for line, record in enumerate(reader, start=2):
                    if rows >= MAX_ROWS:
                        raise InputError(f"input has more than {MAX_ROWS} rows")
                    try:
                        values = [float(record[f]) for f in features]
                    except (TypeError, ValueError):
                        raise InputError(f"line {line}: every feature must be a number") from None
                    if not all(math.isfinite(v) for v in values):
                        raise InputError(f"line {line}: features must be finite numbers")
                    probability = risk(model, values)
                    high = probability >= threshold
                    writer.writerow([record[ID_COLUMN], f"{probability:.4f}", int(high)])
                    rows += 1
                    flagged += high
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return rows, flagged


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
