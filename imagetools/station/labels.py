"""A label for each card that passed: the unit's name and identity in text, and a QR code that a
scanner at packing reads to match the unit, its box and its ledger record.

The size is for the most common desktop label printer: 62 mm continuous tape (Brother QL,
DK-22205) at 300 dpi, whose printable width is 696 dots; a label is 696 x 342 px, cut at 29 mm.
The image is bilevel (thermal printers have no grey) with the resolution in the PNG, so a print
dialog does not scale it. The QR code holds compact JSON with sorted keys, ASCII only:
`{"fingerprint":"<64 hex>","identity":{...}}`; no secret is in it, so the file is 0644. The
text is cut with an ellipsis to fit; the code never is (a code that does not match the record
would be worse than none): an identity too long for a readable code is refused.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from typing import Any

import qrcode
import qrcode.constants
from PIL import Image, ImageDraw, ImageFont

from ..atomic import write_atomic
from ..errors import EnvironmentProblem, UsageError, from_oserror
from ..keys import normalize_fingerprint

DPI = 300
WIDTH, HEIGHT = 696, 342  # 58.9 x 29 mm: the printable width of 62 mm tape at 300 dpi
MARGIN = 12
QR_SIDE = HEIGHT - 2 * MARGIN  # the code's square, quiet zone included, at the right
QUIET = 4  # modules of white around the code (the QR standard's minimum)
MAX_QR_BYTES = 2953  # what any QR code (version 40, level L) holds
MIN_MODULE = 3  # px per module: 0.25 mm, what handheld scanners read reliably
MAX_TEXT = 200  # characters of any one text looked at before fitting
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
NAME_SIZE, LINE_SIZE, SMALL_SIZE = 52, 28, 22


def make_label(path: str | os.PathLike[str], *, unit: str, identity: dict[str, Any], fingerprint: str) -> None:
    """Write PATH (a PNG, atomically, 0644): UNIT's name, IDENTITY and a QR code of both plus the
    key FINGERPRINT (SHA-256 hex of the public key, as the ledger holds it)."""
    fingerprint = normalize_fingerprint(fingerprint)
    payload = label_payload(identity, fingerprint)
    image = Image.new("L", (WIDTH, HEIGHT), 255)
    image.paste(_code(payload, unit), (WIDTH - MARGIN - QR_SIDE, MARGIN))
    _text(ImageDraw.Draw(image), unit, identity, fingerprint)
    out = io.BytesIO()
    image.convert("1", dither=Image.Dither.NONE).save(out, "PNG", dpi=(DPI, DPI), optimize=True)
    try:
        write_atomic(path, out.getvalue(), mode=0o644)
    except OSError as exc:
        raise from_oserror(exc, f"cannot write the label {os.fspath(path)}", EnvironmentProblem) from None


def label_payload(identity: dict[str, Any], fingerprint: str) -> str:
    """What the QR code holds: compact, key-sorted, ASCII JSON of the identity and fingerprint."""
    if not isinstance(identity, dict) or not all(isinstance(k, str) for k in identity):
        raise UsageError("a label's identity must be a JSON object with string keys")
    try:
        return json.dumps(
            {"fingerprint": fingerprint, "identity": identity},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
    except (TypeError, ValueError, RecursionError):
        raise UsageError("a label's identity must hold only JSON values (strings, numbers, lists)") from None


def _code(payload: str, unit: str) -> Image.Image:
    """The QR code as a QR_SIDE square, with whole pixels per module."""
    most = (QR_SIDE // MIN_MODULE - 2 * QUIET - 17) // 4  # the largest version still readable
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QUIET, box_size=1)
    too_long = UsageError(
        f"the identity of unit {_clean(unit)[:40]!r} is too long for a label's QR code "
        f"({len(payload)} bytes of JSON); shorten the identity or print without --labels"
    )
    if len(payload) > MAX_QR_BYTES:
        raise too_long
    code.add_data(payload.encode("ascii"))
    try:
        code.make(fit=True)
    except (qrcode.exceptions.DataOverflowError, ValueError):  # beyond version 40
        raise too_long from None
    if code.version > most:
        raise too_long
    matrix = code.get_matrix()
    modules = len(matrix)
    small = Image.new("L", (modules, modules), 255)
    small.putdata([0 if dark else 255 for row in matrix for dark in row])
    side = QR_SIDE // modules * modules
    square = Image.new("L", (QR_SIDE, QR_SIDE), 255)
    offset = (QR_SIDE - side) // 2
    square.paste(small.resize((side, side), Image.Resampling.NEAREST), (offset, offset))
    return square


def _text(draw: ImageDraw.ImageDraw, unit: str, identity: dict[str, Any], fingerprint: str) -> None:
    width = WIDTH - QR_SIDE - 3 * MARGIN
    name, line, small = _font(NAME_SIZE, 0), _font(LINE_SIZE, 1), _font(SMALL_SIZE, 1)
    draw.text((MARGIN, MARGIN), _fit(draw, _clean(unit), name, width), font=name, fill=0)
    bottom = HEIGHT - MARGIN - SMALL_SIZE
    draw.text((MARGIN, bottom), _fit(draw, f"SHA256 {fingerprint[:16]}…", small, width), font=small, fill=0)
    top, step = MARGIN + NAME_SIZE + 16, LINE_SIZE + 8
    room = (bottom - 8 - top) // step
    lines = [f"{_clean(k)}: {_value(v)}"[:MAX_TEXT] for k, v in sorted(identity.items())]
    if len(lines) > room:
        lines = lines[: room - 1] + [f"+{len(lines) - room + 1} more in the code"]
    for n, text in enumerate(lines):
        draw.text((MARGIN, top + n * step), _fit(draw, text, line, width), font=line, fill=0)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value[:MAX_TEXT])
    return _clean(value if isinstance(value, str) else json.dumps(value))


def _clean(text: str) -> str:
    """TEXT as it may be printed: bounded, control and formatting characters (bidi overrides,
    line breaks, zero-width ones) shown as '?'."""
    return "".join("?" if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c for c in str(text)[:MAX_TEXT])


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """TEXT, or its longest start with '…' that fits WIDTH pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "…"


def _font(size: int, prefer: int) -> Any:
    """DejaVu (wide coverage) where it is installed, else the font bundled with Pillow."""
    for path in FONTS[prefer:]:
        if os.path.isfile(path):
            return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
    return ImageFont.load_default(size)
