"""PNG montage of the most anomalous axial slices with the heat map over the scan (numpy + zlib only)."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("encode_png expects an (H, W, 3) uint8 array")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def heat_colours(v: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white 'hot' colour map of values in [0, 1] -> (..., 3) floats in [0, 1]."""
    v = np.clip(v, 0.0, 1.0)
    return np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)


def montage(intensity: np.ndarray, anomaly: np.ndarray, label: np.ndarray, threshold: float,
            n_slices: int = 6, columns: int = 3) -> np.ndarray:
    """RGB montage (uint8) of the ``n_slices`` canonical slices (axis 0) with the largest anomaly maxima.

    The heat map is blended where anomaly > 0, scaled so the label threshold sits at mid-scale; label
    voxels get a full-opacity outline-free blend. Each tile is titled by nothing: its order is by score.
    """
    per_slice = anomaly.reshape(anomaly.shape[0], -1).max(axis=1)
    idx = np.sort(np.argsort(-per_slice)[:n_slices])
    lo, hi = np.percentile(intensity[intensity != 0], [1, 99.5]) if np.any(intensity != 0) else (0.0, 1.0)
    tiles = []
    for i in idx:
        gray = np.clip((intensity[i] - lo) / max(hi - lo, 1e-6), 0, 1)[..., None].repeat(3, axis=-1)
        scaled = anomaly[i] / (2 * threshold) if threshold > 0 else anomaly[i] / max(anomaly.max(), 1e-6)
        alpha = np.clip(scaled, 0, 1)[..., None] * 0.6 + 0.3 * (label[i][..., None] > 0)
        alpha = np.where(anomaly[i][..., None] > 0, np.clip(alpha, 0, 0.9), 0.0)
        tiles.append((1 - alpha) * gray + alpha * heat_colours(scaled))
    rows = -(-len(tiles) // columns)
    h, w = tiles[0].shape[:2] if tiles else (1, 1)
    canvas = np.zeros((rows * h, columns * w, 3))
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return (canvas * 255).round().astype(np.uint8)
