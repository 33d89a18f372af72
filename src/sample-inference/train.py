"""Train the sample model: logistic regression for a 5-year type 2 diabetes risk score.

The training cohort is synthetic and generated deterministically (the generator's ground truth
is written below), so the model can be rebuilt bit for bit without shipping patient data:

    python3 train.py                    # writes model.json next to this file
    python3 train.py --host-sample ../../samples/host-data/patients.csv

The fit is iteratively reweighted least squares (Newton's method) with a small L2 penalty on
standardized features, in numpy (the version containers/requirements-app.txt pins, so the enclave
image carries the same library the model was built with).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path

import numpy as np

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
    """Fit the model with numpy; return the JSON-ready model document."""
    features = np.array([[p[f] for f in FEATURES] for p in patients], dtype=np.float64)
    labels = np.array([p["developed_diabetes"] for p in patients], dtype=np.float64)
    n = len(patients)
    means = features.mean(axis=0)
    stds = features.std(axis=0)
    stds[stds == 0] = 1.0
    # Design matrix: a constant 1 for the intercept, then standardized features.
    x = np.hstack([np.ones((n, 1)), (features - means) / stds])
    penalty = np.full(x.shape[1], L2_PENALTY * n)
    penalty[0] = 0.0  # no penalty on the intercept
    beta = np.zeros(x.shape[1])
    for _ in range(25):
        mu = _sigmoid_array(x @ beta)
        gradient = x.T @ (labels - mu) - penalty * beta
        hessian = (x * (mu * (1.0 - mu))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-9:
            break
    probabilities = _sigmoid_array(x @ beta).tolist()
    label_list = labels.tolist()
    return {
        "model": "logistic_regression",
        "target": "developed_diabetes_within_5_years",
        "features": list(FEATURES),
        "means": [round(float(m), 10) for m in means],
        "scales": [round(float(s), 10) for s in stds],
        "intercept": round(float(beta[0]), 10),
        "coefficients": [round(float(b), 10) for b in beta[1:]],
        "default_threshold": 0.5,
        "training": {
            "rows": n,
            "seed": TRAINING_SEED,
            "positive_rate": round(float(labels.mean()), 4),
            "accuracy": round(accuracy(probabilities, label_list, 0.5), 4),
            "auc": round(auc(probabilities, label_list), 4),
        },
    }


def _sigmoid_array(z: np.ndarray) -> np.ndarray:
    """The logistic function without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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
