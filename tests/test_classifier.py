"""The engine-independent part of a classifier: temperature and test-time augmentation."""

import numpy as np

from fer_cli.models.classifier import Classifier, softmax
from fer_cli.models.tta import views


class LinearRunner:
    """Logits that depend on where the bright pixels are, so a mirror image scores differently."""

    def __init__(self):
        self.weights = np.random.default_rng(0).normal(size=(3, 1 * 4 * 4)).astype(np.float32)

    def prepare(self, device="auto"):
        return "cpu"

    def logits(self, pixels):
        return (pixels.reshape(len(pixels), -1).astype(np.float32) / 255) @ self.weights.T


def _classifier(temperature=1.0):
    preprocess = {"size": 4, "channels": 1, "mean": [0.5], "std": [0.25]}
    return Classifier("lin", "linear", LinearRunner(), ["a", "b", "c"], preprocess, temperature=temperature)


def test_temperature_divides_the_logits():
    pixels = np.random.default_rng(1).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    hot, cold = _classifier(2.0), _classifier(1.0)
    np.testing.assert_allclose(hot.probabilities(pixels), softmax(cold.runner.logits(pixels) / 2), rtol=1e-6)
    # a higher temperature never makes the top class more confident
    assert (hot.probabilities(pixels).max(1) <= cold.probabilities(pixels).max(1) + 1e-7).all()


def test_tta_averages_each_face_with_its_mirror_image():
    classifier = _classifier()
    pixels = np.random.default_rng(2).integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    mirrored = pixels[..., ::-1]
    expected = (classifier.probabilities(pixels) + classifier.probabilities(mirrored)) / 2
    np.testing.assert_allclose(classifier.probabilities(pixels, tta="flip"), expected, rtol=1e-6)
    assert not np.allclose(expected, classifier.probabilities(pixels))  # the mirror image does count
    symmetric = np.concatenate([pixels[..., :2], pixels[..., :2][..., ::-1]], axis=-1)
    np.testing.assert_allclose(classifier.probabilities(symmetric, tta="flip"), classifier.probabilities(symmetric))


def test_crops_tta_averages_twelve_views():
    classifier = _classifier()
    pixels = np.random.default_rng(3).integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    shown = list(views(pixels, "crops"))
    expected = np.mean([classifier.probabilities(view) for view in shown], axis=0)
    np.testing.assert_allclose(classifier.probabilities(pixels, tta="crops"), expected, rtol=1e-6)
    assert len(shown) == 12
