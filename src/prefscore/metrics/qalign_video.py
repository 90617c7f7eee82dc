"""Video frames for Q-Align's ``video-quality`` task: decode with PyAV, keep one frame per second.

The official scorer (``Q-Future/Q-Align:q_align/evaluate/scorer.py:13-23``) reads videos with
decord and keeps the frames at indices ``int(fps * i)`` for ``i in range(int(len(video) / fps))``,
with ``fps`` the average frame rate: one frame per second, truncated, so a clip shorter than one
second has no frame. This module does the same with PyAV (``pip install av``; decord often has no
wheel for current Pythons): frames are decoded in presentation order, the frame count is the
number of frames decoded, and the average rate is the stream's ``average_rate`` (FFmpeg's
``avg_frame_rate``, which is what decord's ``get_avg_fps`` reports). Frames are converted to RGB
by FFmpeg's swscale in both readers; the conversion flags may differ, so pixel values can differ by
a level or so from decord's.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Union

from PIL import Image

from ..errors import ImageError

VideoInput = Union[str, os.PathLike, bytes]


def sample_indices(num_frames: int, fps: float) -> list[int]:
    """The official 1-fps indices: ``[int(fps * i) for i in range(int(num_frames / fps))]``."""
    if fps <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return [int(fps * i) for i in range(int(num_frames / fps))]


def read_video_frames(source: VideoInput, name: str) -> list[Image.Image]:
    """Decode ``source`` (a path or the bytes of a file) and return the 1-fps frames as RGB images.

    Raises :class:`ImageError` naming ``name`` when the file is missing, cannot be decoded, has no
    video stream or no frame rate, or is shorter than one second (no frame is sampled then).
    """
    try:
        import av
    except ImportError:
        raise ImageError(name, "reading videos needs PyAV: pip install av") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(name, "empty data (0 bytes)")
        handle = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(name, "file not found" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        handle = str(path)
    try:
        container = av.open(handle)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ImageError(name, f"cannot open video: {exc}") from None
    try:
        if not container.streams.video:
            raise ImageError(name, "no video stream in the file")
        stream = container.streams.video[0]
        fps = _average_rate(stream)
        if fps is None:
            raise ImageError(name, "the video stream has no frame rate")
        # The kept indices int(fps * i) do not depend on the length; only how many are kept does.
        kept: list[Image.Image] = []
        next_i, count = 0, 0
        for frame in container.decode(stream):
            if count == int(fps * next_i):
                image = frame.to_image()  # RGB24 via swscale
                while count == int(fps * next_i):  # a rate under 1 fps repeats indices, as decord's get_batch
                    kept.append(image)
                    next_i += 1
            count += 1
    except ImageError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise ImageError(name, f"cannot decode video: {exc}") from None
    finally:
        container.close()
    if count == 0:
        raise ImageError(name, "the video has no decodable frame")
    n = int(count / fps)
    if n == 0:
        raise ImageError(name, f"video is shorter than one second ({count} frames at {fps:g} fps): "
                               "1-fps sampling, as the official scorer, keeps no frame")
    return kept[:n]


def _average_rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and Fraction(rate) > 0:
            return float(rate)
    return None
