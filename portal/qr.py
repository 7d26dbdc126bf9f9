"""QR codes drawn server-side as inline SVG (segno): no image request, no data: URL, no script.

The SVG is made of numbers only: segno turns the data into modules and writes their outline as
one path, so nothing of the data (an otpauth:// URI naming the staff member's email) is echoed
as text. It is marked safe for the page only after it matches that exact shape (no <title>,
<desc> or other text): a future segno that wrote the data out would be refused here, not
rendered. Colours are SVG presentation attributes, not inline styles, so the page's CSP
(style-src 'self') holds.
"""

from __future__ import annotations

import re

import segno
from markupsafe import Markup

LABEL = "QR code for your authenticator app"
SCALE = 4  # pixels per module: a version 4-6 code is 164-196 px with its quiet zone
_SVG = re.compile(
    r'<svg width="\d+" height="\d+" class="qr"><g transform="scale\(\d+\)">'
    r'<path fill="#fff" d="M0 0h\d+v\d+h-\d+z"/><path stroke="#000" d="[Mmhv0-9. -]+"/></g></svg>'
)


def qr_svg(data: str, label: str = LABEL) -> Markup:
    """An inline <svg> QR code of `data` (a regular QR code, never a Micro QR), labelled for screen readers."""
    svg = segno.make(data, micro=False).svg_inline(scale=SCALE, dark="#000", light="#fff", svgclass="qr",
                                                   lineclass=None)
    if not _SVG.fullmatch(svg):
        raise ValueError("unexpected SVG from segno")
    # Safe: segno's output, matched above against a shape of numbers and fixed attributes only.
    drawing = Markup(svg.removeprefix("<svg "))  # noqa: S704
    # The label is ours, escaped all the same.
    return Markup('<svg role="img" aria-label="{}" ').format(label) + drawing
