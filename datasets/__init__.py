"""Frame sources (ARCHITECTURE §1): every input kind as a lazy iterator of `Frame`, and `open_source` to pick
one from what the user typed."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, get_args

from recon.errors import SourceError

from .base import FrameSource, intrinsics_matrix, length_hint, source_notes
from .calibration import CalibratedSource, Calibration, intrinsics_origin, read_calibration
from .folder import ImageFolderSource
from .image_files import IMAGE_EXTENSIONS, list_images
from .kitti import KittiSource, write_kitti_sequence
from .resize import apply_resize, plan_resize, resize_for_model
from .stream import StreamSource, is_stream_url
from .tum import TumSource, write_tum_sequence
from .video import VIDEO_EXTENSIONS, VideoSource

__all__ = [
    "KINDS",
    "CalibratedSource",
    "Calibration",
    "FrameSource",
    "ImageFolderSource",
    "KittiSource",
    "StreamSource",
    "TumSource",
    "VideoSource",
    "apply_resize",
    "detect_kind",
    "intrinsics_origin",
    "length_hint",
    "open_source",
    "plan_resize",
    "read_calibration",
    "resize_for_model",
    "source_notes",
    "write_kitti_sequence",
    "write_tum_sequence",
]

SYNTHETIC_PREFIX = "synthetic:"
SourceKind = Literal["folder", "video", "stream", "kitti", "tum", "synthetic"]
KINDS: tuple[str, ...] = get_args(SourceKind)
_EXPECTED = (
    "expected a video file, an image folder, a KITTI sequence dir (image_2/ + calib.txt), a TUM RGB-D dir "
    "(rgb.txt), a camera index, an rtsp/http URL or synthetic:SCENE"
)


def _synthetic(spec: str, **options: object) -> FrameSource:
    # Imported only when asked for: the renderer is optional and heavier than the file sources.
    try:
        from .synthetic import SyntheticSource
    except ImportError as e:
        raise SourceError(f"synthetic sources are not available in this install ({e})") from None
    scene = spec[len(SYNTHETIC_PREFIX) :] if spec.startswith(SYNTHETIC_PREFIX) else spec
    return _construct(SyntheticSource, "synthetic", scene, options)


def _classes() -> dict[str, Callable[..., FrameSource]]:
    return {
        "folder": ImageFolderSource,
        "video": VideoSource,
        "stream": StreamSource,
        "kitti": KittiSource,
        "tum": TumSource,
    }


def _construct(cls: Callable[..., FrameSource], kind: str, spec: object, options: dict[str, object]) -> FrameSource:
    """Reject an option the kind does not take with one line naming the ones it does, not a TypeError."""
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    if params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # The first parameter is `path`, given here as `spec`; the keyword-only one is path's older name
        # (see the note above base.path_missing): neither is an option.
        accepted = [name for name, p in list(params.items())[1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise SourceError(
                f"option {', '.join(unknown)} does not apply to {kind} sources; they take: {', '.join(accepted)}"
            )
    return cls(spec, **options)


def detect_kind(spec: str | int | Path) -> str:
    """The source kind a spec names, or SourceError saying what was expected."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return "stream"
    text = str(spec).strip()
    if not text:
        raise SourceError(f"empty input; {_EXPECTED}")
    if text.startswith(SYNTHETIC_PREFIX):
        return "synthetic"
    if text.isdigit() or is_stream_url(text):
        return "stream"
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "image_2").is_dir() and (path / "calib.txt").is_file():
            return "kitti"
        if path.name == "image_2" and (path.parent / "calib.txt").is_file():
            return "kitti"
        if (path / "rgb.txt").is_file():
            return "tum"
        if list_images(path):
            return "folder"
        if (path / "image_2").is_dir():
            raise SourceError(
                f"'{text}' looks like a KITTI sequence (image_2/) but has no calib.txt; add calib.txt "
                "with a 'P2: 12 numbers' line (3x4 projection of the image_2 camera)"
            )
        if (path / "rgb").is_dir():
            raise SourceError(
                f"'{text}' looks like a TUM RGB-D sequence (rgb/) but has no rgb.txt; add rgb.txt "
                "with 'timestamp rgb/NAME.png' lines"
            )
        raise SourceError(f"cannot open '{text}': a folder without images; {_EXPECTED}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return "video"
        if suffix in IMAGE_EXTENSIONS:
            raise SourceError(f"cannot open '{text}': a single image is not a sequence; pass its folder")
        raise SourceError(f"cannot open '{text}': unknown file type '{suffix or 'none'}'; {_EXPECTED}")
    raise SourceError(f"cannot open '{text}': not found; {_EXPECTED}")


def open_source(spec: str | int | Path, kind: str | None = None, **options: object) -> FrameSource:
    """A frame source for `spec`: a digit string / int -> camera stream; rtsp/http/udp/... URL -> stream;
    a dir with image_2/ + calib.txt -> KITTI; a dir with rgb.txt -> TUM; a dir with images -> folder;
    a video file -> video; `synthetic:SCENE` -> the synthetic renderer. `kind` overrides the guess (one
    of KINDS). `options` go to the source's constructor (stride, max_frames, intrinsics, ...)."""
    if kind is None:
        kind = detect_kind(spec)
    elif kind not in KINDS:
        raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    # The user's calibration applies to every kind, over the source's own (see CalibratedSource).
    K_flag, calib_path = intrinsics_matrix(options.pop("intrinsics", None)), options.pop("calib", None)
    calib = read_calibration(str(calib_path)) if calib_path is not None else None
    if K_flag is not None and calib is None and _takes(kind, "intrinsics"):
        options["intrinsics"] = K_flag  # the source's own K: a TUM folder then skips its preset's warning
    if kind == "synthetic":
        source = _synthetic(str(spec), **options)
    else:
        target: object = spec if kind == "stream" else Path(str(spec)).expanduser()
        source = _construct(_classes()[kind], kind, target, options)
    return source if K_flag is None and calib is None else CalibratedSource(source, K_flag, calib)


def _takes(kind: str, option: str) -> bool:
    return kind != "synthetic" and option in inspect.signature(_classes()[kind]).parameters
