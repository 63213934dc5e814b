"""The embedded synthetic image-classification set.

Each class is a smooth random prototype: a sum of a few low-frequency plane waves per
channel. A sample is its class prototype, shifted by a random sub-pixel offset and scaled by a
random gain, plus Gaussian pixel noise of standard deviation `noise` (the prototype has unit
variance, so `noise` is the inverse signal-to-noise ratio and the difficulty knob). Plane waves
make the shift exact (a phase change) with no border artefacts. Low frequencies (large-scale
shapes) average out pixel noise and were measured to train markedly faster than higher ones;
the band widens with the number of classes, because the space of smooth patterns on a small
grid has only a handful of dimensions and more classes need room to stay apart.

With `feature_skew > 0` every training sample also belongs to a latent *writer* whose style,
an additive smooth pattern of amplitude `feature_skew` and a contrast gain, is applied to all
of its samples; `Dataset.writers` records it so the `natural` partition gives each device its
own writers, i.e. its own input distribution.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from raysim.data.base import Dataset, normalise, rng_for
from raysim.settings import Section

WAVES = 6  # plane waves per class and channel
MIN_FREQ, MAX_FREQ = 0.25, 1.0  # cycles per image for up to 10 classes: large-scale shapes
SHIFT = 1.0 / 16.0  # largest shift, as a fraction of the image side
GAIN = 0.25  # sample gain is uniform in 1 +- GAIN
SAMPLES_PER_WRITER = 16  # so the default 20000 samples give 1000 writers, the default fleet
_RENDER_BUDGET = 1 << 22  # wave-by-pixel-row values per rendering chunk (bounds memory)


class SyntheticConfig(Section):
    """Embedded synthetic image-classification set (no files needed)."""

    samples: int = Field(20000, ge=20, description="images in all (train and test)")
    classes: int = Field(10, ge=2, le=100, description="labels")
    image_size: int = Field(12, ge=4, le=64, description="height and width in pixels")
    channels: int = Field(1, ge=1, le=4, description="colour channels")
    noise: float = Field(0.6, ge=0.0, description="std of the Gaussian noise added to every pixel")
    feature_skew: float = Field(0.0, ge=0.0, description="per-writer style and contrast shift (feature "
                                "skew across devices under partition kind=natural); 0 = none")



def _max_freq(classes: int, size: int) -> float:
    """Top of the frequency band: MAX_FREQ for 10 classes, growing as sqrt(classes / 10)."""
    return float(min(size / 4.0, MAX_FREQ * max(1.0, np.sqrt(classes / 10.0))))


def _waves(rng: np.random.Generator, n: int, channels: int, max_freq: float) -> dict[str, np.ndarray]:
    """Random plane-wave parameters, shape `(n, channels, WAVES)` each, unit total variance."""
    shape = (n, channels, WAVES)
    freq = rng.uniform(MIN_FREQ, max_freq, shape)
    angle = rng.uniform(0.0, 2.0 * np.pi, shape)
    amp = rng.normal(0.0, 1.0, shape)
    # A cosine has variance 1/2, so this makes the pattern's variance about 1.
    amp *= np.sqrt(2.0 / (amp**2).sum(axis=-1, keepdims=True))
    return {"fx": freq * np.cos(angle), "fy": freq * np.sin(angle), "phase": rng.uniform(0.0, 2.0 * np.pi, shape), "amp": amp}


def _render(w: dict[str, np.ndarray], dx: np.ndarray, dy: np.ndarray, size: int) -> np.ndarray:
    """Images `(n, C, size, size)` of the waves `w` (leading dim n) shifted by (dx, dy) pixels.

    cos(a + b) = cos a cos b - sin a sin b separates each wave into an x and a y factor, so
    rendering is two small outer products instead of a wave per pixel.
    """
    t = np.arange(size, dtype=np.float64) / size
    sx = (dx / size)[:, None, None]
    sy = (dy / size)[:, None, None]
    ax = 2 * np.pi * w["fx"][..., None] * (t - sx[..., None]) + w["phase"][..., None]  # (n, C, W, size)
    by = 2 * np.pi * w["fy"][..., None] * (t - sy[..., None])
    amp = w["amp"][..., None]
    img = np.einsum("ncwy,ncwx->ncyx", amp * np.cos(by), np.cos(ax)) - np.einsum(
        "ncwy,ncwx->ncyx", amp * np.sin(by), np.sin(ax))
    return img


def _take(w: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in w.items()}


def _samples(cfg: SyntheticConfig, rng: np.random.Generator, protos: dict[str, np.ndarray],
             labels: np.ndarray) -> np.ndarray:
    n, size = len(labels), cfg.image_size
    max_shift = SHIFT * size
    dx = rng.uniform(-max_shift, max_shift, n)
    dy = rng.uniform(-max_shift, max_shift, n)
    gain = rng.uniform(1.0 - GAIN, 1.0 + GAIN, n)
    x = np.empty((n, cfg.channels, size, size), dtype=np.float32)
    chunk = _chunk(cfg.channels, size)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        x[sl] = gain[sl, None, None, None] * _render(_take(protos, labels[sl]), dx[sl], dy[sl], size)
    # The noise in chunks: the same draws as one call (the stream just continues), without two
    # float64 temporaries of the whole set (5 GB at 2.2M images of 12x12).
    for lo in range(0, n, chunk):
        x[lo:lo + chunk] += (cfg.noise * rng.standard_normal(x[lo:lo + chunk].shape)).astype(np.float32)
    return x


def _chunk(channels: int, size: int) -> int:
    return max(1, _RENDER_BUDGET // (channels * WAVES * size * size))


def _apply_styles(x: np.ndarray, writer: np.ndarray, n_writers: int, skew: float,
                  rng: np.random.Generator, max_freq: float) -> None:
    """Add each writer's style pattern and contrast to its samples, in place."""
    size = x.shape[-1]
    zero = np.zeros(n_writers)
    style = _render(_waves(rng, n_writers, x.shape[1], max_freq), zero, zero, size).astype(np.float32)
    contrast = np.exp(rng.normal(0.0, 0.25 * skew, n_writers)).astype(np.float32)
    chunk = _chunk(x.shape[1], size)
    for lo in range(0, len(x), chunk):
        sl = slice(lo, lo + chunk)
        w = writer[sl]
        x[sl] = contrast[w, None, None, None] * x[sl] + skew * style[w]


def load_synthetic(cfg: SyntheticConfig, test_fraction: float, seed: int) -> Dataset:
    """The synthetic set: `cfg.samples` images, `test_fraction` of them held out for testing."""
    n_test = min(cfg.samples - 1, max(1, int(round(test_fraction * cfg.samples))))
    n_train = cfg.samples - n_test
    max_freq = _max_freq(cfg.classes, cfg.image_size)
    protos = _waves(rng_for(seed, "data.synthetic.prototypes"), cfg.classes, cfg.channels, max_freq)
    draw = rng_for(seed, "data.synthetic.samples")
    # Balanced classes in a random order: every class is present even in small sets.
    labels = draw.permutation(np.arange(cfg.samples) % cfg.classes).astype(np.int64)
    x = _samples(cfg, draw, protos, labels)
    writer_ids = None
    if cfg.feature_skew > 0:
        n_writers = max(1, n_train // SAMPLES_PER_WRITER)
        style_rng = rng_for(seed, "data.synthetic.writers")
        # Test samples get random writers' styles too, so the test set is the fleet's mixture.
        writer_of = np.concatenate([
            style_rng.permutation(np.arange(n_train) % n_writers),
            style_rng.integers(0, n_writers, n_test),
        ]).astype(np.int64)
        _apply_styles(x, writer_of, n_writers, cfg.feature_skew, style_rng, max_freq)
        writer_ids = writer_of[:n_train]
    xtr, xte = normalise(x[:n_train], x[n_train:])
    return Dataset("synthetic", xtr, labels[:n_train], xte, labels[n_train:], num_classes=cfg.classes,
                   writers=writer_ids)
