"""Writers of the real on-disk layouts the data sources read, for tests: WebDataset tars (with
the webdataset library's own TarWriter), img2dataset parquet, MMC4 jsonl(.zip), OpenFlamingo
MMC4 tars, text corpora; and real photos (scikit-image's) in unusual encodings."""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import zipfile
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
import skimage.data
import webdataset

from kosmos_jax.data import synthetic

PHOTO_DIR = os.path.dirname(skimage.data.__file__)


def photo(name: str) -> Image.Image:
  """A real photo shipped with scikit-image (e.g. chelsea.png, camera.png, rocket.jpg)."""
  return Image.open(os.path.join(PHOTO_DIR, name))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def exif_rotated_jpeg(image: Image.Image, orientation: int = 6) -> bytes:
  """JPEG whose pixels are stored unrotated with an EXIF Orientation tag (6: rotate 90 CW)."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encode(image.convert("RGB"), "JPEG", quality=95, exif=exif.tobytes())


def unusual_images() -> dict[str, bytes]:
  """Valid images a naive decoder gets wrong: grey, palette, RGBA, CMYK, 16-bit, EXIF, WebP."""
  chelsea = photo("chelsea.png").convert("RGB")
  camera = photo("camera.png")                                        # 8-bit grey
  sixteen = Image.fromarray(np.asarray(camera, np.uint16) * 257)      # I;16, same picture
  return {
      "grey_png": encode(camera, "PNG"),
      "palette_png": encode(chelsea.quantize(64), "PNG"),
      "rgba_png": encode(photo("astronaut.png").convert("RGBA"), "PNG"),
      "cmyk_jpeg": encode(chelsea.convert("CMYK"), "JPEG", quality=95),
      "sixteen_bit_png": encode(sixteen, "PNG"),
      "exif_rotated_jpeg": exif_rotated_jpeg(chelsea),
      "webp": encode(chelsea, "WEBP", quality=90),
      "photo_jpeg": open(os.path.join(PHOTO_DIR, "rocket.jpg"), "rb").read(),
      "gif": encode(chelsea.convert("P"), "GIF"),
  }


def bad_images() -> dict[str, tuple[bytes, str]]:
  """name -> (bytes, the reason the image recipe must give)."""
  jpeg = encode(photo("coffee.png").convert("RGB"), "JPEG")
  big = encode(Image.new("L", (3000, 3000)), "PNG")    # 9 M pixels: over a 1 M test limit
  return {"empty": (b"", "image_empty"), "not_an_image": (b"<html>404</html>", "image_corrupt"),
          "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image_corrupt"),
          "too_large": (big, "image_too_large")}


def write_webdataset(path: str, samples: Sequence[dict[str, Any]]) -> str:
  """A tar of samples {"__key__": ..., "jpg": bytes, "txt": str, "json": dict, ...}."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with webdataset.TarWriter(path) as sink:
    for sample in samples:
      sink.write(dict(sample))
  return path


def img2dataset_sample(key: str, image: Optional[bytes], caption: Optional[str],
                       status: str = "success", ext: str = "jpg") -> dict[str, Any]:
  """One sample as img2dataset writes it (image, txt, json with its metadata fields)."""
  meta = {"caption": caption, "url": f"http://127.0.0.1/{key}.{ext}", "key": key,
          "status": status, "error_message": None, "width": 64, "height": 64,
          "original_width": 64, "original_height": 64, "exif": "{}", "sha256": "0" * 64}
  sample = {"__key__": key, "json": meta}
  if image is not None:
    sample[ext] = image
  if caption is not None:
    sample["txt"] = caption
  return sample


def write_img2dataset_parquet(path: str, rows: Sequence[dict[str, Any]],
                              encode_format: str = "jpg", row_group_size: int = 3) -> str:
  """img2dataset's parquet output: the image bytes in a column named by the encode format."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  columns = {name: [] for name in ("caption", "url", "key", "status", "error_message", "width",
                                   "height", "original_width", "original_height", "exif",
                                   "sha256", encode_format)}
  for row in rows:
    ok = row.get("status", "success") == "success"
    values = {"caption": row.get("caption"), "url": f"http://x/{row['key']}", "key": row["key"],
              "status": row.get("status", "success"),
              "error_message": None if ok else "HTTP Error 404", "width": 64, "height": 64,
              "original_width": 64, "original_height": 64, "exif": "{}", "sha256": None,
              encode_format: row.get("image")}
    for name, value in values.items():
      columns[name].append(value)
  table = pa.table({name: pa.array(v, type=pa.binary() if name == encode_format else None)
                    for name, v in columns.items()})
  pq.write_table(table, path, row_group_size=row_group_size)
  return path


def mmc4_document(url: str, texts: Sequence[str], images: Sequence[tuple[str, int, float]],
                  similarity: Optional[np.ndarray] = None) -> dict[str, Any]:
  """An MMC4 document; images are (image_name, matched_text_index, matched_sim)."""
  if similarity is None:
    similarity = np.zeros((len(images), len(texts)))
    for row, (_, index, sim) in enumerate(images):
      if 0 <= index < len(texts):
        similarity[row, index] = sim
  return {"url": url, "text_list": list(texts), "could_have_url_duplicate": 0,
          "similarity_matrix": np.asarray(similarity).tolist(),
          "image_info": [{"image_name": name, "raw_url": f"http://x/{name}",
                          "matched_text_index": index, "matched_sim": sim,
                          "face_detections": None} for name, index, sim in images]}


def write_jsonl(path: str, lines: Sequence[Any], compression: Optional[str] = None) -> str:
  """JSON lines (a str is written as is, e.g. a malformed line); compression None/gz/zip."""
  text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
  data = text.encode()
  if compression == "gz":
    data = gzip.compress(data)
  elif compression == "zip":
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
      archive.writestr(os.path.basename(path)[:-len(".zip")], data)
    data = buffer.getvalue()
  with open(path, "wb") as f:
    f.write(data)
  return path


def openflamingo_sample(doc: dict[str, Any], images: dict[str, bytes]) -> dict[str, Any]:
  """An OpenFlamingo MMC4 tar sample: the document with each image inlined as base64."""
  doc = json.loads(json.dumps(doc))
  for info in doc["image_info"]:
    data = images.get(info["image_name"])
    if data is not None:
      info["image_base64"] = base64.b64encode(data).decode()
  return {"__key__": doc["url"].rsplit("/", 1)[-1], "json": doc}


def shapes_caption_shards(directory: str, num_shards: int = 4,
                          count: int = 400) -> list[str]:
  """The shapes world's train captions as img2dataset-style WebDataset shards (PNG images)."""
  data = synthetic.split_data(synthetic.WorldConfig(), "train")
  images, answers = data.images, data.captions["answer"]
  count = min(count, len(answers))
  paths = []
  for shard in range(num_shards):
    samples = []
    for i in range(shard, count, num_shards):
      key = f"{shard:05d}{i:04d}"
      samples.append(img2dataset_sample(key, encode(Image.fromarray(images[i]), "PNG"),
                                        answers[i], ext="png"))
    paths.append(write_webdataset(os.path.join(directory, f"{shard:05d}.tar"), samples))
  return paths
