"""The embedded human-activity-recognition (HAR) set: wearable sensor windows, no files.

A sample is a window of a body-worn inertial sensor: a 3-axis accelerometer (in g) and,
with 6 channels, a 3-axis gyroscope (in rad/s), `steps` samples at `rate_hz`. What makes the
activities differ is physical:

* **gravity**: the accelerometer reads 1 g along the direction of the Earth's pull in the
  sensor's frame; upright activities see it along one axis, sitting tilted, lying across.
* **cadence**: locomotion is periodic at the step frequency (walking ~1.9 Hz, running
  ~2.8 Hz, stairs slower and asymmetric, cycling a smooth pedal rhythm), with harmonics whose
  mix gives each gait its shape (running's and going downstairs' impacts are sharp, i.e.
  strong harmonics); the gyroscope swings at the stride frequency, half the step frequency.
* **stillness**: static postures carry only a faint physiological tremor.

Every user has a *style* of their own, applied to all their windows: sensor gain and offset
per channel (calibration), a tempo (their cadence), the orientation at which they wear the
sensor (a small rotation of both sensors' frames), and a noise level. `Dataset.writers`
holds the user of every training window, so `partition.kind: natural` gives each device its
own users: real feature skew across devices. `style` scales all of it; 0 makes users alike.

    >>> ds = load_har(HarConfig(users=20, samples=2000), test_fraction=0.2, seed=0)
    >>> ds.input_shape, ds.num_classes
    ((6, 64), 6)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from raysim.data.base import Dataset, normalise, rng_for
from raysim.settings import Section

HARMONICS = 3
_RENDER_BUDGET = 1 << 22  # floats per rendering chunk (bounds the temporaries' memory)


class HarConfig(Section):
    """Embedded human-activity-recognition set: wearable accelerometer/gyroscope windows with
    a per-user style (no files needed)."""

    users: int = Field(30, ge=1, description="people wearing the sensor; each has a style of their own")
    samples: int = Field(6000, ge=20, description="windows in all (train and test)")
    steps: int = Field(64, ge=16, le=1024, description="time steps per window")
    rate_hz: float = Field(32.0, gt=4.0, le=200.0, description="sensor sampling rate (Hz); with steps, the window length")
    channels: Literal[3, 6] = Field(6, description="3: accelerometer only; 6: accelerometer and gyroscope")
    activities: int = Field(6, ge=2, le=8, description="how many of: walking, running, sitting, standing, lying, "
                            "upstairs, downstairs, cycling")
    noise: float = Field(0.1, ge=0.0, description="std of the sensor noise (g, or rad/s for the gyroscope)")
    style: float = Field(1.0, ge=0.0, description="strength of the per-user style (gain, offset, tempo, "
                         "orientation, noise level); 0 = all users alike")



@dataclass(frozen=True)
class Activity:
    """What one activity looks like on the sensor.

    `gravity`: unit direction of gravity in the sensor frame. `cadence_hz`: step frequency (0
    for a posture). `accel_g`: per-axis amplitude of the periodic acceleration (g);
    `harmonics`: relative strength of harmonics 1..3; `gyro_rad_s`: per-axis amplitude of the
    rotation rate at the stride frequency. Figures are of the order of published wrist/waist
    recordings (e.g. UCI-HAR, WISDM): walking ~0.2-0.5 g, running ~1 g peaks.
    """

    name: str
    gravity: tuple[float, float, float]
    cadence_hz: float
    accel_g: tuple[float, float, float]
    harmonics: tuple[float, float, float]
    gyro_rad_s: tuple[float, float, float]


ACTIVITIES: tuple[Activity, ...] = (
    Activity("walking", (0.0, 0.0, -1.0), 1.9, (0.15, 0.10, 0.35), (1.0, 0.45, 0.15), (0.6, 0.3, 0.4)),
    Activity("running", (0.0, 0.0, -1.0), 2.8, (0.35, 0.25, 0.95), (1.0, 0.7, 0.4), (1.6, 0.8, 1.0)),
    Activity("sitting", (0.0, 0.55, -0.84), 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    Activity("standing", (0.0, 0.05, -1.0), 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    Activity("lying", (-1.0, 0.1, -0.1), 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    Activity("upstairs", (0.0, 0.2, -0.98), 1.6, (0.12, 0.18, 0.30), (1.0, 0.3, 0.25), (0.5, 0.6, 0.3)),
    Activity("downstairs", (0.0, -0.2, -0.98), 2.1, (0.18, 0.12, 0.50), (1.0, 0.8, 0.5), (0.7, 0.5, 0.5)),
    Activity("cycling", (0.0, 0.45, -0.89), 1.3, (0.20, 0.08, 0.12), (1.0, 0.1, 0.05), (0.3, 0.2, 1.2)),
)

TREMOR_G = 0.01        # physiological tremor of a still body, around 8-12 Hz
TREMOR_HZ = 10.0
CADENCE_JITTER = 0.05  # window-to-window cadence spread (relative)
AMPLITUDE_JITTER = 0.15


@dataclass(frozen=True)
class UserStyle:
    """Per-user sensor and gait style, one row per user."""

    gain: np.ndarray         # (U, C) multiplicative sensor gain
    offset: np.ndarray       # (U, C) additive sensor bias
    tempo: np.ndarray        # (U,) cadence multiplier
    rotation: np.ndarray     # (U, 3, 3) sensor orientation on the body
    noise_scale: np.ndarray  # (U,) multiplier of the sensor noise


@dataclass(frozen=True)
class Windows:
    """Raw windows before normalisation: `x` (N, C, T) in g and rad/s, activity labels and
    the user of every window."""

    x: np.ndarray
    labels: np.ndarray
    users: np.ndarray


def _rotations(rng: np.random.Generator, n: int, angle_std: float) -> np.ndarray:
    """`n` rotation matrices about random axes by angles ~ N(0, angle_std) (Rodrigues)."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    theta = rng.normal(0.0, angle_std, n)
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * k + (1.0 - c) * (k @ k)


def draw_styles(users: int, channels: int, strength: float, rng: np.random.Generator) -> UserStyle:
    """Every user's style; `strength` 0 gives identical users."""
    return UserStyle(
        gain=np.exp(rng.normal(0.0, 0.15 * strength, (users, channels))),
        offset=rng.normal(0.0, 0.1 * strength, (users, channels)),
        tempo=np.exp(rng.normal(0.0, 0.12 * strength, users)),
        rotation=_rotations(rng, users, 0.35 * strength),
        noise_scale=np.exp(rng.normal(0.0, 0.4 * strength, users)),
    )


def _table(acts: tuple[Activity, ...], field: str) -> np.ndarray:
    return np.array([getattr(a, field) for a in acts], dtype=np.float64)


def _render(cfg: HarConfig, acts: tuple[Activity, ...], labels: np.ndarray, users: np.ndarray,
            style: UserStyle, shape_phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Windows (n, C, T) of the given activities and users, in the sensor frame."""
    n, steps = len(labels), cfg.steps
    t = np.arange(steps, dtype=np.float64) / cfg.rate_hz
    k = np.arange(1, HARMONICS + 1, dtype=np.float64)
    cadence = _table(acts, "cadence_hz")[labels] * style.tempo[users] * np.exp(rng.normal(0, CADENCE_JITTER, n))
    phase = rng.uniform(0.0, 2 * np.pi, n)
    amp = np.exp(rng.normal(0.0, AMPLITUDE_JITTER, n))
    harm = _table(acts, "harmonics")[labels]                       # (n, K)
    accel = _table(acts, "accel_g")[labels] * amp[:, None]         # (n, 3)
    gyro = _table(acts, "gyro_rad_s")[labels] * amp[:, None]
    # Steps for the accelerometer; strides (half the frequency) for the gyroscope.
    arg_acc = 2 * np.pi * (cadence[:, None, None] * k[None, :, None]) * t[None, None, :] + k[None, :, None] * phase[:, None, None]
    wave = np.empty((n, 6, steps))
    sp = shape_phase[labels]                                        # (n, 6, K)
    for axis in range(3):
        w = harm[:, :, None] * np.sin(arg_acc + sp[:, axis, :, None])
        wave[:, axis] = accel[:, axis, None] * w.sum(axis=1)
        g = harm[:, :, None] * np.sin(arg_acc / 2.0 + sp[:, 3 + axis, :, None])
        wave[:, 3 + axis] = gyro[:, axis, None] * g.sum(axis=1)
    wave[:, :3] += _table(acts, "gravity")[labels][:, :, None]
    wave[:, :3] += TREMOR_G * np.sin(2 * np.pi * TREMOR_HZ * t[None, None, :] + rng.uniform(0, 2 * np.pi, (n, 3, 1)))
    rot = style.rotation[users]
    wave[:, :3] = np.einsum("nij,njt->nit", rot, wave[:, :3])
    wave[:, 3:] = np.einsum("nij,njt->nit", rot, wave[:, 3:])
    wave = wave[:, :cfg.channels]
    wave *= style.gain[users][:, :, None]
    wave += style.offset[users][:, :, None]
    wave += (cfg.noise * style.noise_scale[users])[:, None, None] * rng.standard_normal(wave.shape)
    return wave.astype(np.float32)


def _chunk(cfg: HarConfig) -> int:
    return max(1, _RENDER_BUDGET // (6 * HARMONICS * cfg.steps))


def generate(cfg: HarConfig, seed: int) -> Windows:
    """Raw windows of `cfg.samples` (users interleaved at random, activities balanced within
    each user), deterministic from `seed`."""
    acts = ACTIVITIES[:cfg.activities]
    style = draw_styles(cfg.users, cfg.channels, cfg.style, rng_for(seed, "data.har.styles"))
    # Phase offsets per activity, axis and harmonic give each gait its waveform shape.
    shape_phase = rng_for(seed, "data.har.waveforms").uniform(0.0, 2 * np.pi, (len(ACTIVITIES), 6, HARMONICS))
    draw = rng_for(seed, "data.har.windows")
    users = draw.permutation(np.arange(cfg.samples) % cfg.users).astype(np.int64)
    labels = np.empty(cfg.samples, dtype=np.int64)
    for u in range(cfg.users):  # balanced activities per user, in a random order
        mine = np.flatnonzero(users == u)
        labels[mine] = draw.permutation(np.arange(len(mine)) % cfg.activities)
    x = np.empty((cfg.samples, cfg.channels, cfg.steps), dtype=np.float32)
    chunk = _chunk(cfg)
    for lo in range(0, cfg.samples, chunk):
        sl = slice(lo, lo + chunk)
        x[sl] = _render(cfg, acts, labels[sl], users[sl], style, shape_phase, draw)
    return Windows(x, labels, users)


def load_har(cfg: HarConfig, test_fraction: float, seed: int) -> Dataset:
    """The HAR set: `test_fraction` of the windows (from every user) held out for testing,
    normalised per channel with training statistics; `writers` = user of each training window."""
    w = generate(cfg, seed)
    n_test = min(cfg.samples - 1, max(1, int(round(test_fraction * cfg.samples))))
    perm = rng_for(seed, "data.har.split").permutation(cfg.samples)
    train, test = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    xtr, xte = normalise(w.x[train], w.x[test])
    return Dataset("har", xtr, w.labels[train], xte, w.labels[test], num_classes=cfg.activities,
                   writers=w.users[train])
