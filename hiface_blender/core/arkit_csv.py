"""ARKit blendshape names in every spelling rigs use, and Live Link Face CSV takes (no bpy).

Names are matched through one canonical form: lower case, namespace and Blender's `.001`
suffix dropped, the side as `_l` / `_r` whether it was written `Left`, `_L`, `.L` or `-left`.
So `mouthSmileLeft` (Apple), `MouthSmileLeft` (Live Link Face), `mouthSmile_L` (ICT, this
add-on) and `blendShape1.mouthSmileLeft` (an FBX import) are the same shape.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import HiFaceError

# Apple's 52 ARKit blendshape locations, in Live Link Face's column order.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
    "jawRight", "jawLeft", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthRight",
    "mouthLeft", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft",
    "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)
# Columns Live Link Face writes besides the blendshapes: recognised, not shape keys.
LLF_POSE_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                    "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
LLF_HEADER = ("Timecode", "BlendShapeCount",
              *(n[0].upper() + n[1:] for n in ARKIT_NAMES), *LLF_POSE_COLUMNS)
DEFAULT_TIMECODE_RATE = 60.0
_STANDARD_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0, 120.0)

# `jawLeft`, `mouthRight`: directions of one shape, not sides of a pair.
_DIRECTIONAL_BASES = ("jaw", "mouth")
_SIDE = re.compile(r"^(?P<base>.*?)[\s._\-]?(?P<side>left|right|l|r)$")


def canonical(name: str) -> str:
    """The matching key of a shape name; see the module docstring."""
    n = str(name).strip()
    n = re.sub(r"(\.\d{3,})+$", "", n)                   # Blender's duplicate suffix
    n = re.split(r"[:|]", n)[-1]                          # Maya / FBX namespaces
    if "." in n:
        head, _, tail = n.rpartition(".")
        n = n if tail.lower() in ("l", "r") else tail     # keep `.L`, drop `blendShape1.`
    n = n.lower()
    m = _SIDE.match(n)
    if m is None or not m.group("base"):
        return n
    base, side = m.group("base"), m.group("side")
    short = side in ("l", "r")
    # A bare trailing l/r is a side only with a separator (`mouthSmile_L`), never in
    # `mouthRollUpper` or `jawForward`'s neighbours.
    if short and n[len(base):len(base) + 1] not in ("_", ".", "-", " "):
        return n
    if base in _DIRECTIONAL_BASES:
        return base + ("left" if side[0] == "l" else "right")
    return f"{base}_{side[0]}"


# ICT splits two ARKit shapes into halves.
_SPLIT = ("browinnerup", "cheekpuff")
KNOWN = frozenset({canonical(n) for n in ARKIT_NAMES}
                  | {f"{b}_{s}" for b in _SPLIT for s in "lr"})


def is_arkit_name(name: str) -> bool:
    return canonical(name) in KNOWN


def match_channels(key_names, channel_names) -> dict[str, tuple[int, ...]]:
    """Which source channels drive each target shape key (their mean is the key's value).

    A single ARKit key (`browInnerUp`) takes the mean of ICT's halves; ICT's halves
    (`browInnerUp_L`) both take a single ARKit channel. Keys that are not ARKit shapes, and
    ARKit keys the source does not provide (`tongueOut` from a video), are left out.
    """
    index: dict[str, int] = {}
    for i, ch in enumerate(channel_names):
        index.setdefault(canonical(ch), i)
    out: dict[str, tuple[int, ...]] = {}
    for key in key_names:
        c = canonical(key)
        if c not in KNOWN:
            continue
        if c in index:
            out[key] = (index[c],)
        elif f"{c}_l" in index and f"{c}_r" in index:
            out[key] = (index[f"{c}_l"], index[f"{c}_r"])
        elif c[-2:] in ("_l", "_r") and c[:-2] in index:
            out[key] = (index[c[:-2]],)
    return out


# ---------------------------------------------------------------------------------------------
# Live Link Face CSV

_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;.](\d+(?:\.\d*)?)\s*$")


@dataclass
class ArkitTake:
    """A recorded take: blendshape curves over time."""
    times: np.ndarray                 # (N,) float64 seconds from the first row, increasing
    names: list[str]                  # (C,) blendshape columns as written in the file
    values: np.ndarray                # (N, C) float32
    timecode_rate: float              # frames per second of the timecode's frame field
    unknown: list[str] = field(default_factory=list)   # columns neither shapes nor pose
    pose_columns: list[str] = field(default_factory=list)  # head / eye rotation, not applied
    source_path: str = ""

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def parse_timecode(text: str) -> tuple[int, float]:
    """`HH:MM:SS:FF.fff` -> (whole seconds, frame number with its sub-frame fraction)."""
    m = _TIMECODE.match(text)
    if m is None:
        raise ValueError(f"not a timecode: {text!r}")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return h * 3600 + mi * 60 + s, float(m.group(4))


def infer_timecode_rate(seconds: np.ndarray, frames: np.ndarray) -> float:
    """The timecode's frame rate: the smallest standard rate above the largest frame field
    once the take has crossed a second (the field wraps there); Live Link Face's 60 for
    takes shorter than that."""
    top = float(np.floor(frames.max())) if len(frames) else 0.0
    crossed = len(seconds) > 1 and seconds.max() > seconds.min()
    for rate in _STANDARD_RATES:
        if rate > top and (crossed or rate >= DEFAULT_TIMECODE_RATE):
            return rate
    return float(top + 1)


def read_live_link_csv(path, *, timecode_rate: float | None = None) -> ArkitTake:
    """Read a Live Link Face CSV. Raises HiFaceError (one line, for the artist) when the file
    cannot be read, has no timecodes, no ARKit blendshape columns, or a malformed row."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HiFaceError(f"Cannot read {path.name}: {exc}") from exc
    if not rows:
        raise HiFaceError(f"{path.name} is empty")
    header = [c.strip() for c in rows[0]]
    lower = [c.lower() for c in header]
    if "timecode" not in lower:
        raise HiFaceError(f"{path.name} is not a Live Link Face CSV: no Timecode column")
    t_col = lower.index("timecode")
    pose_lower = {c.lower() for c in LLF_POSE_COLUMNS}
    shape_cols, pose, unknown = [], [], []
    seen: set[str] = set()
    for i, name in enumerate(header):
        if i == t_col or name.lower() == "blendshapecount":
            continue
        if name.lower() in pose_lower:
            pose.append(name)
        elif is_arkit_name(name) and canonical(name) not in seen:
            seen.add(canonical(name))
            shape_cols.append(i)
        else:
            unknown.append(name or f"(column {i + 1} has no name)")
    if not shape_cols:
        listed = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise HiFaceError(f"{path.name} has no ARKit blendshape columns"
                          + (f" (unknown columns: {listed})" if unknown else ""))
    data = rows[1:]
    if not data:
        raise HiFaceError(f"{path.name} has a header but no rows")

    secs = np.empty(len(data), np.float64)
    frames = np.empty(len(data), np.float64)
    values = np.empty((len(data), len(shape_cols)), np.float32)
    for r, row in enumerate(data):
        line = r + 2
        if len(row) < len(header):
            raise HiFaceError(f"{path.name}, line {line}: {len(row)} values, "
                              f"the header has {len(header)} columns")
        try:
            secs[r], frames[r] = parse_timecode(row[t_col])
        except ValueError:
            raise HiFaceError(f"{path.name}, line {line}: bad timecode {row[t_col]!r} "
                              "(expected HH:MM:SS:FF.fff)") from None
        try:
            values[r] = [float(row[i]) for i in shape_cols]
        except ValueError:
            bad = next(header[i] for i in shape_cols if not _is_float(row[i]))
            raise HiFaceError(f"{path.name}, line {line}: {bad} is not a number") from None
    if not np.isfinite(values).all():
        raise HiFaceError(f"{path.name}: blendshape values must be finite numbers")

    rate = float(timecode_rate) if timecode_rate else infer_timecode_rate(secs, frames)
    t = secs + frames / rate
    t = t - t[0]
    # A take recorded across midnight wraps to 00:00:00.
    t = np.where(t < -43200.0, t + 86400.0, t)
    step = np.diff(t)
    if (step < 0).any():
        line = int(np.flatnonzero(step < 0)[0]) + 3
        raise HiFaceError(f"{path.name}, line {line}: timecode goes backwards")
    # Repeated timecodes: the last row wins.
    keep = np.r_[step > 0, True]
    return ArkitTake(times=t[keep], names=[header[i] for i in shape_cols],
                     values=np.clip(values[keep], 0.0, 1.0), timecode_rate=rate,
                     unknown=unknown, pose_columns=pose, source_path=str(path))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_live_link_csv(path, times, names, values, *, timecode_rate: float = 60.0,
                        start_seconds: float = 0.0) -> None:
    """Write a take in Live Link Face's layout (all 52 shapes and the pose columns, zeros
    where a name is not given). For tests and for handing tracks to other tools."""
    by_canon = {canonical(n): i for i, n in enumerate(names)}
    values = np.asarray(values, np.float64)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LLF_HEADER)
        for r, t in enumerate(np.asarray(times, np.float64)):
            # Milliframes as integers, so 59.9996 frames never prints as "60.000".
            mf = int(round((start_seconds + t) * timecode_rate * 1000.0))
            frames_per_s = int(round(timecode_rate * 1000.0))
            whole, ff = divmod(mf, frames_per_s)
            h, rem = divmod(whole, 3600)
            m, s = divmod(rem, 60)
            row = [f"{h:02d}:{m:02d}:{s:02d}:{ff // 1000:02d}.{ff % 1000:03d}",
                   len(LLF_HEADER) - 2]
            for n in ARKIT_NAMES:
                i = by_canon.get(canonical(n))
                row.append(f"{values[r, i]:.8f}" if i is not None else "0.0")
            row.extend(["0.0"] * len(LLF_POSE_COLUMNS))
            w.writerow(row)
