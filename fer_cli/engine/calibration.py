"""Temperature scaling (Guo et al. 2017): one number per model that makes "confidence" mean what it says.

The logits are divided by a temperature T fitted to minimise the negative log-likelihood of
validation labels; T > 1 softens an over-confident model, T < 1 sharpens a timid one. The top
class never changes, so accuracy is untouched. ``fer train`` fits T on its validation data at the
end of a run; ``fer calibrate`` fits it for an existing checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..errors import FerError
from ..models.classifier import log_class_prior, softmax
from .metrics import expected_calibration_error, summarize, summarize_votes

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


MIN_IMAGES = 100  # fewer, and one temperature fitted to them says more about them than about the model


def calibrate(probs: np.ndarray, labels: np.ndarray, current_temperature: float = 1.0, fitted_on: str = "") -> dict:
    """Fit a temperature to probabilities a model gave at ``current_temperature``; the report holds
    the model's new temperature and its NLL and ECE before and after.

    The new temperature is applied only when it can be trusted: on at least ``MIN_IMAGES`` images,
    and when a temperature fitted on one half of them lowers the NLL on the other half (both ways
    round); otherwise the model keeps ``current_temperature`` and ``reason`` says why.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(probs).all():
        raise FerError(f"the model's probabilities are not finite numbers on {fitted_on or 'these images'}: not fitted")
    log_probs = np.log(np.clip(probs, 1e-12, None))
    labels = np.asarray(labels)
    reason = _distrust(log_probs, labels)
    if reason:
        report = calibration_report(log_probs, labels, 1.0)
        return {
            **report,
            "temperature": current_temperature,
            "fitted_on": fitted_on,
            "applied": False,
            "reason": reason,
        }
    # Kept within the search range overall: a model that is never wrong here would drive T to 0.
    temperature = float(np.clip(current_temperature * fit_temperature(log_probs, labels), *TEMPERATURE_RANGE))
    report = calibration_report(log_probs, labels, temperature / current_temperature)
    if not (np.isfinite(temperature) and np.isfinite(report["nll_after"])):
        raise FerError(f"the fit on {fitted_on or 'these images'} is not finite (temperature {temperature}, NLL "
                       f"{report['nll_after']}): not applied")  # fmt: skip
    return {**report, "temperature": temperature, "fitted_on": fitted_on, "applied": True, "reason": ""}


PRIOR_CORRECTION_BOUND = 10.0  # the largest |tau| given: beyond it the rarest class outweighs any logit


def check_prior_correction(setting: str, words: tuple[str, ...] = ("auto", "none")) -> None:
    """A ``--prior-correction`` value as fer train and fer calibrate take it: one of ``words``, or a number (tau)
    from -10 to 10 (not NaN, not infinite); a ValueError saying so otherwise."""
    if setting in words:
        return
    try:
        tau = float(setting)
    except ValueError:
        raise ValueError(f"--prior-correction must be {', '.join(words)} or a number (tau)") from None
    if not -PRIOR_CORRECTION_BOUND <= tau <= PRIOR_CORRECTION_BOUND:  # NaN too
        raise ValueError(
            f"--prior-correction must be between {-PRIOR_CORRECTION_BOUND:g} and {PRIOR_CORRECTION_BOUND:g}, "
            f"not {setting}"
        )


# The prior corrections tried, in steps of 0.1. A negative tau gives the common classes more weight: for a model
# trained on balanced batches (--balance), which answers the rare classes more often than they occur.
PRIOR_CORRECTIONS = tuple(round(0.1 * step, 1) for step in range(-15, 16))
ACCURACY_GIVEN = 0.03  # the most accuracy a correction may cost (3 points) for the rare classes' recall
PRIOR_RULE = (
    "the tau in -1.5, -1.4 .. 1.5 with the highest balanced accuracy (mean recall of the classes) on the validation "
    "images among those that cost at most 3 points of accuracy (the one nearest 0 at a tie)"
)
# Why balanced accuracy first: the validation set's mix (FER+: neutral the majority of a third of the faces) is not a
# user's. On posed faces from outside FER2013 a correction that gave up 2-3 points on FER+ gained ~10 (issue 30), and
# the earlier rule (accuracy + balanced accuracy within 1 point) kept the neutral pull. The cost stays bounded.


def fit_prior_correction(log_probs: np.ndarray, labels: np.ndarray, prior, fitted_on: str = "") -> dict:
    """Choose how much of the training data's class prior to take off the logits (``logits - tau * log prior``;
    Menon et al. 2021): a model trained where one class is common (FER+'s neutral: a third of the votes) over-answers
    it, and the rare classes' recall (balanced accuracy) gains more than the accuracy loses. ``PRIOR_RULE`` says how.

    ``log_probs`` (N, C) are the model's log-probabilities (or logits) at no correction. The report holds the tau
    chosen and, for every tau tried, the accuracy and balanced accuracy; ``tau`` is 0 when there are fewer than
    ``MIN_IMAGES`` images or the prior is uniform (nothing to correct).
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels)
    log_prior = log_class_prior(prior)
    sweep = [{"tau": tau, **_corrected_scores(log_probs, labels, log_prior, tau)} for tau in PRIOR_CORRECTIONS]
    none = next(row for row in sweep if row["tau"] == 0)
    allowed = [row for row in sweep if row["accuracy"] >= none["accuracy"] - ACCURACY_GIVEN - 1e-9]
    best = max(allowed, key=lambda row: (round(row["balanced_accuracy"], 9), -abs(row["tau"])))
    reason = ""
    if len(labels) < MIN_IMAGES:
        best, reason = none, f"too few images ({len(labels):,}) to choose it on; it takes at least {MIN_IMAGES}"
    elif np.ptp(log_prior) < 1e-6:
        best, reason = none, "the training classes were balanced: nothing to correct"
    return {
        "tau": best["tau"],
        "prior": [float(p) for p in np.exp(log_prior)],
        "rule": PRIOR_RULE,
        "fitted_on": fitted_on,
        "images": int(len(labels)),
        "before": {key: none[key] for key in ("accuracy", "balanced_accuracy")},
        "after": {key: best[key] for key in ("accuracy", "balanced_accuracy")},
        "sweep": sweep,
        "reason": reason,
    }


def choose_prior_correction(
    log_probs: np.ndarray, labels: np.ndarray, prior, setting: str, fitted_on: str = ""
) -> dict | None:
    """``fit_prior_correction`` as ``--prior-correction`` asks: 'auto' (the rule), 'none' (None) or a number (that tau,
    the sweep still reported beside it)."""
    if setting == "none" or prior is None:
        return None
    report = fit_prior_correction(log_probs, labels, prior, fitted_on)
    if setting == "auto":
        return report
    tau = float(setting)
    after = _corrected_scores(np.asarray(log_probs), np.asarray(labels), log_class_prior(prior), tau)
    return {**report, "tau": tau, "rule": "given (--prior-correction)", "after": after, "reason": ""}


def validation_metrics(labelled, corrected, clear, class_names) -> dict:
    """The metrics ``fer train`` stores, for probabilities ``corrected`` of ``labelled``'s images (against the labels
    of the images ``clear``, and with votes, the votes' own measures over all of them)."""
    if labelled.votes is None:
        return summarize(labelled.labels[clear], corrected[clear], class_names)
    return summarize_votes(labelled.votes, labelled.labels, corrected, class_names)


def refit_prior_correction(classifier, probs, labels, clear, setting: str, fitted_on: str):
    """The probabilities ``classifier`` gave, taken back to its raw logits (up to a constant per image), corrected anew
    as ``setting`` says (auto, none, a number: chosen on the images ``clear``); returns them (temperature 1) and the
    correction's report."""
    if classifier.class_prior is None:
        raise FerError(f"{classifier.name} records no class prior (trained before fer recorded one): no correction")
    prior = np.asarray(classifier.class_prior, dtype=np.float64)
    raw = classifier.temperature * np.log(np.clip(probs, 1e-12, None)) - classifier.logit_adjustment
    correction = choose_prior_correction(raw[clear], labels[clear], prior, setting, fitted_on)
    if correction is None:  # none: no correction at all
        correction = {
            "tau": 0.0,
            "rule": "none (--prior-correction none)",
            "prior": prior.tolist(),
            "reason": "none asked",
        }
    return softmax(raw - correction["tau"] * log_class_prior(prior)), correction


def _corrected_scores(log_probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, tau: float) -> dict:
    """Accuracy and balanced accuracy (mean recall of the classes present) of ``log_probs - tau * log_prior``."""
    predicted = (log_probs - tau * log_prior).argmax(axis=1)
    recall = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "balanced_accuracy": float(np.mean(recall)) if recall else 0.0,
    }


def describe_prior_correction(report: dict) -> str:
    """One line on what the prior correction chose, for the log."""
    if report["reason"]:
        return f"prior correction: none ({report['reason']})"
    before, after = report["before"], report["after"]
    return (
        f"prior correction tau {report['tau']:g} (logits - tau * log training prior) on {report['images']:,} images: "
        f"accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}, "
        f"balanced accuracy {before['balanced_accuracy']:.4f} -> {after['balanced_accuracy']:.4f}"
    )


def describe(report: dict, previous_temperature: float = 1.0) -> str:
    """One line on what a calibration did, for the log."""
    if not report.get("applied", True):
        return f"temperature kept at {previous_temperature:.3f} ({report['reason']})"
    return (
        f"temperature {previous_temperature:.3f} -> {report['temperature']:.3f} on {report['images']:,} images: "
        f"expected calibration error {report['ece_before']:.4f} -> {report['ece_after']:.4f}, "
        f"NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}"
    )


def _distrust(log_probs: np.ndarray, labels: np.ndarray) -> str:
    """Why a temperature fitted to these images should not be applied, or '' if it should."""
    if len(labels) < MIN_IMAGES:
        return f"too few images ({len(labels):,}) to fit a temperature on; it takes at least {MIN_IMAGES}"
    halves = np.array_split(np.random.default_rng(0).permutation(len(labels)), 2)
    held_out, unscaled = 0.0, 0.0
    for fit_on, test_on in (halves, halves[::-1]):
        temperature = fit_temperature(log_probs[fit_on], labels[fit_on])
        held_out += _nll(log_probs[test_on] / temperature, labels[test_on]) * len(test_on)
        unscaled += _nll(log_probs[test_on], labels[test_on]) * len(test_on)
    if held_out >= unscaled:
        return "a temperature fitted on half of the images does not lower the error on the other half"
    return ""


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
