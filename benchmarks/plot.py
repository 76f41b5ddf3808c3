"""A PNG line plot (throughput vs batch size) drawn with PIL, so the benchmarks need no
matplotlib: axes, ticks, one polyline per series, a legend."""
from __future__ import annotations

from PIL import Image
from PIL import ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _ticks(top: float, count: int = 5) -> list[float]:
  """Round tick values from 0 to at least `top`."""
  raw = max(top, 1e-9) / count
  magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  return [step * i for i in range(count + 2) if step * (i - 1) < top]


def _panel(draw, box, title, series, xlabel, ylabel):
  """One chart in `box` (x0, y0, x1, y1); series: {label: [(x, y), ...]}."""
  x0, y0, x1, y1 = box
  left, bottom, top, right = x0 + 70, y1 - 45, y0 + 30, x1 - 15
  xs = sorted({x for pts in series.values() for x, _ in pts}) or [1]
  ticks = _ticks(max([y for pts in series.values() for _, y in pts] + [1]))
  ymax = ticks[-1]
  px = lambda x: left + (right - left) * (xs.index(x) + 0.5) / len(xs)
  py = lambda y: bottom - (bottom - top) * y / ymax
  draw.text((left, y0 + 8), title, fill="black")
  draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
  for t in ticks:
    draw.line([(left - 4, py(t)), (right, py(t))], fill=(225, 225, 225))
    draw.text((x0 + 5, py(t) - 6), f"{t:,.0f}", fill="black")
  for x in xs:
    draw.text((px(x) - 6, bottom + 6), str(x), fill="black")
  draw.text(((left + right) // 2 - 30, bottom + 24), xlabel, fill="black")
  draw.text((x0 + 5, top - 22), ylabel, fill="black")
  for i, (label, pts) in enumerate(series.items()):
    color = COLORS[i % len(COLORS)]
    pts = sorted(pts)
    coords = [(px(x), py(y)) for x, y in pts]
    if len(coords) > 1:
      draw.line(coords, fill=color, width=3)
    for cx, cy in coords:
      draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=color)
    draw.line([(left + 10, top + 8 + 16 * i), (left + 35, top + 8 + 16 * i)], fill=color,
              width=3)
    draw.text((left + 40, top + 2 + 16 * i), label, fill="black")


def save(path: str, panels: list[dict], title: str = "") -> None:
  """panels: [{"title", "series": {label: [(batch, value)]}, "xlabel", "ylabel"}] side by side."""
  width, height = 480 * max(len(panels), 1), 380
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  if title:
    draw.text((10, 4), title, fill="black")
  for i, p in enumerate(panels):
    _panel(draw, (480 * i, 16, 480 * (i + 1), height), p["title"], p["series"],
           p.get("xlabel", "batch size"), p.get("ylabel", "tokens/s"))
  image.save(path)
