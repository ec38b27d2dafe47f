"""The report's chart kit: :class:`Axes`, a plot frame that maps data ranges to an SVG box and draws ticks,
reference lines and axis labels, and :func:`escape` for any text put in the page.

Plots are built as lists of SVG element strings; nothing here knows about screens.
"""

from __future__ import annotations

import html


def escape(value: object) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


class Axes:
    """A plot frame: data ranges mapped to an SVG box, with tick helpers.

    Parameters
    ----------
    width, height
        The SVG's size, px.
    x, y
        The data ranges ``(lo, hi)`` of the axes; values outside are drawn on the edge.
    margin
        ``(top, right, bottom, left)`` px between the SVG's edge and the plot box (room for ticks and labels).

    Attributes
    ----------
    parts
        The SVG elements drawn so far, in order; plots append their own marks to it.
    """

    def __init__(self, width: int, height: int, x: tuple[float, float], y: tuple[float, float],
                 margin: tuple[int, int, int, int] = (20, 20, 45, 55)) -> None:
        self.width, self.height = width, height
        self.x_lo, self.x_hi = x
        self.y_lo, self.y_hi = y
        self.top, self.right, self.bottom, self.left = margin
        self.parts = [f"<rect x='{self.left}' y='{self.top}' width='{width - self.left - self.right}' "
                      f"height='{height - self.top - self.bottom}' fill='none' stroke='#999'/>"]

    def px(self, v: float) -> float:
        """The x pixel of data value ``v`` (clipped to the x range)."""
        v = min(max(v, self.x_lo), self.x_hi)
        return self.left + (v - self.x_lo) / (self.x_hi - self.x_lo) * (self.width - self.left - self.right)

    def py(self, v: float) -> float:
        """The y pixel of data value ``v`` (clipped to the y range; up is larger)."""
        v = min(max(v, self.y_lo), self.y_hi)
        return self.height - self.bottom - (v - self.y_lo) / (self.y_hi - self.y_lo) * (
            self.height - self.top - self.bottom)

    def x_tick(self, v: float, label: str) -> None:
        """A tick with its label under the x axis at ``v``."""
        x, y = self.px(v), self.height - self.bottom
        self.parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y}' y2='{y + 4}' stroke='#999'/>"
                          f"<text x='{x:.1f}' y='{y + 16}' text-anchor='middle'>{escape(label)}</text>")

    def y_tick(self, v: float, label: str) -> None:
        """A tick with its label left of the y axis at ``v``."""
        x, y = self.left, self.py(v)
        self.parts.append(f"<line x1='{x - 4}' x2='{x}' y1='{y:.1f}' y2='{y:.1f}' stroke='#999'/>"
                          f"<text x='{x - 6}' y='{y + 4:.1f}' text-anchor='end'>{escape(label)}</text>")

    def h_line(self, v: float, colour: str = "#b2182b", dash: str = "4,3") -> None:
        """A horizontal line across the plot box at ``y = v`` (a threshold: dashed red by default)."""
        y = self.py(v)
        self.parts.append(f"<line x1='{self.left}' x2='{self.width - self.right}' y1='{y:.1f}' y2='{y:.1f}' "
                          f"stroke='{colour}' stroke-dasharray='{dash}'/>")

    def v_line(self, v: float, colour: str = "#b2182b", dash: str = "4,3") -> None:
        """A vertical line across the plot box at ``x = v`` (a threshold: dashed red by default)."""
        x = self.px(v)
        self.parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{self.top}' y2='{self.height - self.bottom}' "
                          f"stroke='{colour}' stroke-dasharray='{dash}'/>")

    def labels(self, x: str, y: str) -> None:
        """The axis titles: ``x`` under the x axis, ``y`` rotated left of the y axis."""
        mid_x = (self.left + self.width - self.right) / 2
        mid_y = (self.top + self.height - self.bottom) / 2
        self.parts.append(f"<text x='{mid_x}' y='{self.height - 8}' text-anchor='middle'>{escape(x)}</text>"
                          f"<text transform='translate(14,{mid_y}) rotate(-90)' text-anchor='middle'>"
                          f"{escape(y)}</text>")

    def svg(self, extra: str = "") -> str:
        """The finished ``<svg>`` element: the parts drawn, then ``extra`` on top (e.g. labels)."""
        return (f"<svg width='{self.width}' height='{self.height}' role='img'>{''.join(self.parts)}{extra}"
                "</svg>")
