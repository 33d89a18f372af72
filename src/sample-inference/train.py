"""Train the sample model: logistic regression for a 5-year type 2 diabetes risk score.

The training cohort is synthetic and generated deterministically (the generator's ground truth
is written below), so the model can be rebuilt bit for bit without shipping patient data:

    python3 train.py                    # writes model.json next to this file
    python3 train.py --host-sample ../../samples/host-data/patients.csv

The fit is iteratively reweighted least squares (Newton's method) with a small L2 penalty on
standardized features: a few passes over the data, pure standard library.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path

FEATURES = (
    "age",
    "bmi",
    "fasting_glucose",
    "systolic_bp",
    "hdl_cholesterol",
    "smoker",
    "family_history",
)
TRAINING_SEED = 20240611
TRAINING_ROWS = 6000
HOST_SAMPLE_SEED = 77
HOST_SAMPLE_ROWS = 500
L2_PENALTY = 1e-3


def generate_patients(rows: int, seed: int) -> list[dict[str, float]]:
    """A synthetic cohort with plausible marginals and a known risk model (see `_true_logit`)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic cohort, not a secret
    patients = []
    for i in range(rows):
        age = min(90.0, max(18.0, rng.gauss(52, 14)))
        bmi = min(55.0, max(16.0, rng.gauss(27.5, 5.0) + 0.03 * (age - 52)))
        glucose = min(240.0, max(60.0, rng.gauss(98, 14) + 0.9 * (bmi - 27.5)))
        sbp = min(210.0, max(85.0, rng.gauss(126, 15) + 0.35 * (age - 52)))
        hdl = min(110.0, max(20.0, rng.gauss(52, 13) - 0.6 * (bmi - 27.5)))
        smoker = 1.0 if rng.random() < 0.18 else 0.0
        family = 1.0 if rng.random() < 0.25 else 0.0
        patient = {
            "patient_id": f"P{seed % 1000:03d}-{i:05d}",
            "age": round(age),
            "bmi": round(bmi, 1),
            "fasting_glucose": round(glucose),
            "systolic_bp": round(sbp),
            "hdl_cholesterol": round(hdl),
            "smoker": int(smoker),
            "family_history": int(family),
        }
        probability = _sigmoid(_true_logit(patient))
        patient["developed_diabetes"] = 1 if rng.random() < probability else 0
        patients.append(patient)
    return patients


def _true_logit(p: dict[str, float]) -> float:
    return (
        -2.0
        + 0.035 * (p["age"] - 52)
        + 0.11 * (p["bmi"] - 27.5)
        + 0.065 * (p["fasting_glucose"] - 98)
        + 0.012 * (p["systolic_bp"] - 126)
        - 0.03 * (p["hdl_cholesterol"] - 52)
        + 0.45 * p["smoker"]
        + 0.9 * p["family_history"]
    )


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def train(patients: list[dict[str, float]]) -> dict:
    """Fit the model; return the JSON-ready model document."""
    n = len(patients)
    means = [sum(p[f] for p in patients) / n for f in FEATURES]
    stds = [
        math.sqrt(sum((p[f] - m) ** 2 for p in patients) / n) or 1.0
        for f, m in zip(FEATURES, means, strict=True)
    ]
    # Design matrix rows: a constant 1 for the intercept, then standardized features.
    rows = [
        [1.0] + [(p[f] - m) / s for f, m, s in zip(FEATURES, means, stds, strict=True)]
        for p in patients
    ]
    labels = [float(p["developed_diabetes"]) for p in patients]
    k = len(FEATURES) + 1
    beta = [0.0] * k
    for _ in range(25):
        gradient = [0.0] * k
        hessian = [[0.0] * k for _ in range(k)]
        for x, y in zip(rows, labels, strict=True):
            mu = _sigmoid(sum(b * v for b, v in zip(beta, x, strict=True)))
            weight = mu * (1.0 - mu)
            residual = y - mu
            for i in range(k):
                gradient[i] += residual * x[i]
                wi = weight * x[i]
                row = hessian[i]
                for j in range(i, k):
                    row[j] += wi * x[j]
        for i in range(k):
            for j in range(i):
                hessian[i][j] = hessian[j][i]
            if i:  # no penalty on the intercept
                hessian[i][i] += L2_PENALTY * n
                gradient[i] -= L2_PENALTY * n * beta[i]
        step = _solve(hessian, gradient)
        beta = [b + d for b, d in zip(beta, step, strict=True)]
        if max(abs(d) for d in step) < 1e-9:
            break
    probabilities = [_sigmoid(sum(b * v for b, v in zip(beta, x, strict=True))) for x in rows]
    return {
        "model": "logistic_regression",
        "target": "developed_diabetes_within_5_years",
        "features": list(FEATURES),
        "means": [round(m, 10) for m in means],
        "scales": [round(s, 10) for s in stds],
        "intercept": round(beta[0], 10),
        "coefficients": [round(b, 10) for b in beta[1:]],
        "default_threshold": 0.5,
        "training": {
            "rows": n,
            "seed": TRAINING_SEED,
            "positive_rate": round(sum(labels) / n, 4),
            "accuracy": round(accuracy(probabilities, labels, 0.5), 4),
            "auc": round(auc(probabilities, labels), 4),
        },
    }


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the Hessian is small and well conditioned)."""
    size = len(vector)
    a = [row[:] + [v] for row, v in zip(matrix, vector, strict=True)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, size):
            factor = a[r][col] / a[col][col]
            for c in range(col, size + 1):
                a[r][c] -= factor * a[col][c]
    solution = [0.0] * size
    for r in range(size - 1, -1, -1):
        solution[r] = (a[r][size] - sum(a[r][c] * solution[c] for c in range(r + 1, size))) / a[r][
            r
        ]
    return solution


def accuracy(probabilities: list[float], labels: list[float], threshold: float) -> float:
    hits = sum((p >= threshold) == (y == 1) for p, y in zip(probabilities, labels, strict=True))
    return hits / len(labels)


def auc(probabilities: list[float], labels: list[float]) -> float:
    """Area under the ROC curve by the rank-sum formula (ties averaged)."""
    order = sorted(range(len(probabilities)), key=lambda i: probabilities[i])
    ranks = [0.0] * len(order)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probabilities[order[j + 1]] == probabilities[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(1 for y in labels if y == 1)
    negatives = len(labels) - positives
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y == 1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def write_host_sample(path: Path) -> None:
    """The host's demo input: same columns as a real extract, no outcome column."""
    patients = generate_patients(HOST_SAMPLE_ROWS, HOST_SAMPLE_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", *FEATURES])
        for p in patients:
            writer.writerow([p["patient_id"], *(p[f] for f in FEATURES)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).resolve().parent / "model.json"
    )
    parser.add_argument("--host-sample", type=Path, help="also write the host's demo CSV here")
    args = parser.parse_args(argv)
    model = train(generate_patients(TRAINING_ROWS, TRAINING_SEED))
    args.output.write_text(json.dumps(model, indent=2) + "\n")
    summary = model["training"]
    print(
        f"trained on {summary['rows']} rows: accuracy {summary['accuracy']}, "
        f"AUC {summary['auc']} -> {args.output}"
    )
    if args.host_sample:
        write_host_sample(args.host_sample)
        print(f"wrote {HOST_SAMPLE_ROWS} host sample rows -> {args.host_sample}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
