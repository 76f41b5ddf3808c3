"""A self-contained HTML report of an evaluation: metrics per task, then each example's image
thumbnails next to its prompt, prediction and references (images inlined as PNG data URIs)."""
from __future__ import annotations

import base64
import html
import io
from typing import Mapping

import numpy as np
from PIL import Image

from kosmos_jax.evaluation import evaluator

THUMBNAIL = 96


def _thumbnail(image: np.ndarray) -> str:
  pil = Image.fromarray(np.asarray(image, np.uint8))
  scale = THUMBNAIL / max(pil.size)
  pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))),
                   Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
  buffer = io.BytesIO()
  pil.save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# The per-example score that decides an example's colour, first found wins: the official VQA
# accuracy (0-1), the top candidate being right, an exact match with a reference.
_MARK_BY = ("vqa", "correct", "exact")


def _mark(example: evaluator.EvalExample) -> str:
  """ "ok" (full marks), "part" (partial credit) or "miss", by the metric's own score."""
  for name in _MARK_BY:
    if name in example.example_scores:
      value = example.example_scores[name]
      return "ok" if value >= 1.0 else ("part" if value > 0 else "miss")
  return "none"


def _example_row(example: evaluator.EvalExample) -> str:
  images = "".join(f'<img src="{_thumbnail(im)}" alt="image {k}">'
                   for k, im in enumerate(example.images))
  references = "<br>".join(html.escape(r) for r in example.references[:5])
  mark = _mark(example)
  shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(example.example_scores.items()))
  scores = ""
  if example.scores is not None:
    scores = "<br><small>" + ", ".join(
        f"{html.escape(c)}: {s:.2f}" for c, s in zip(example.candidates, example.scores)) + "</small>"
  return (f'<tr class="{mark}"><td>{html.escape(example.id)}</td><td>{images}</td>'
          f"<td>{html.escape(example.prompt)}</td><td><b>{html.escape(example.prediction)}</b>"
          f"{scores}</td><td>{html.escape(shown)}</td><td>{references}</td></tr>")


def render(title: str, results: Mapping[str, evaluator.TaskResult],
           max_examples: int = 50) -> str:
  parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}"
           "tr.ok td:nth-child(4){background:#e6ffe6}tr.part td:nth-child(4){background:#fff8d6}"
           "tr.miss td:nth-child(4){background:#fff0f0}"
           "img{image-rendering:pixelated;margin:1px}</style>",
           f"<h1>{html.escape(title)}</h1>", "<h2>Metrics</h2><table><tr><th>task</th>"
           "<th>split</th><th>examples</th><th>metrics</th></tr>"]
  for key, result in results.items():
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.metrics.items()))
    shots = f" ({result.k_shot}-shot)" if result.k_shot else ""
    parts.append(f"<tr><td>{html.escape(result.task)}{shots}</td><td>{result.split}</td>"
                 f"<td>{len(result.examples)}</td><td>{html.escape(metrics)}</td></tr>")
  parts.append("</table>")
  for key, result in results.items():
    parts.append(f"<h2>{html.escape(key)}</h2><table><tr><th>id</th><th>images</th>"
                 "<th>prompt</th><th>prediction</th><th>score</th><th>references</th></tr>")
    parts += [_example_row(e) for e in result.examples[:max_examples]]
    parts.append("</table>")
  return "\n".join(parts)


def write(path: str, title: str, results: Mapping[str, evaluator.TaskResult],
          max_examples: int = 50) -> str:
  with open(path, "w") as f:
    f.write(render(title, results, max_examples))
  return path
