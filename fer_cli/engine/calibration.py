"""Temperature scaling (Guo et al. 2017): one number per model that makes "confidence" mean what it says.

The logits are divided by a temperature T fitted to minimise the negative log-likelihood of
validation labels; T > 1 softens an over-confident model, T < 1 sharpens a timid one. The top
class never changes, so accuracy is untouched. ``fer train`` fits T on its validation data at the
end of a run; ``fer calibrate`` fits it for an existing checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..models.classifier import softmax
from .metrics import expected_calibration_error

TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean NLL of softmax(log_probs / T) (log-probabilities or logits alike).

    The NLL is convex in 1/T, so a golden-section search over 1/T in [0.05, 20] finds it.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels)
    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    nll_a, nll_b = _nll(log_probs * a, labels), _nll(log_probs * b, labels)
    for _ in range(80):
        if nll_a < nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - ratio * (high - low)
            nll_a = _nll(log_probs * a, labels)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + ratio * (high - low)
            nll_b = _nll(log_probs * b, labels)
    return float(1.0 / ((low + high) / 2))


def calibrate(probs: np.ndarray, labels: np.ndarray, current_temperature: float = 1.0, fitted_on: str = "") -> dict:
    """Fit a temperature to probabilities a model gave at ``current_temperature``; the report holds
    the model's new temperature and its NLL and ECE before and after."""
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))
    # Kept within the search range overall: a model that is never wrong here would drive T to 0.
    temperature = float(np.clip(current_temperature * fit_temperature(log_probs, labels), *TEMPERATURE_RANGE))
    report = calibration_report(log_probs, labels, temperature / current_temperature)
    return {**report, "temperature": temperature, "fitted_on": fitted_on}


def calibration_report(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """NLL and expected calibration error before (T = 1) and after scaling by ``temperature``."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    before, after = softmax(log_probs), softmax(log_probs / temperature)
    return {
        "temperature": temperature,
        "images": int(len(labels)),
        "nll_before": _nll(log_probs, labels),
        "nll_after": _nll(log_probs / temperature, labels),
        "ece_before": expected_calibration_error(labels, before),
        "ece_after": expected_calibration_error(labels, after),
    }


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())
