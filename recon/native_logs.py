"""Quiet OpenCV and FFmpeg. Both write straight to the process's stderr, not through Python logging, so a
user would read `[mov,mp4,m4a,3gp,3g2,mj2 @ 0x...] moov atom not found` or `[ WARN:0@0.04] global cap.cpp:212
open VIDEOIO(FFMPEG): ...` around recon's own one-line message, which already says what went wrong and what
to do. A variable the user set wins, so the native logs are one setting away when debugging a capture."""

from __future__ import annotations

import os

import cv2

OPENCV_LOG_ENV = "OPENCV_LOG_LEVEL"
FFMPEG_LOG_ENV = "OPENCV_FFMPEG_LOGLEVEL"
AV_LOG_QUIET = -8  # libavutil's AV_LOG_QUIET


def quiet_native_logs() -> None:
    """Silence OpenCV's own log now, and FFmpeg's from the first capture on. OpenCV reads the FFmpeg level
    once, when it opens its first FFmpeg capture in the process, so this must run before any capture: the
    command line calls it before a command starts (a library user's process keeps its own settings)."""
    os.environ.setdefault(FFMPEG_LOG_ENV, str(AV_LOG_QUIET))
    if OPENCV_LOG_ENV not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
