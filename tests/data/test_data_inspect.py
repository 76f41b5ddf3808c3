"""`python -m kosmos_jax.data.inspect` on hostile corpora: every bad-record kind mixed among
good and unusual-but-valid records. No crash, each bad record counted under its reason, every
good record delivered (checked by key in --dump_jsonl), relative paths as a user types them."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.data import layouts


def inspect(cwd, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "kosmos_jax.data.inspect", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def skip_counts(stdout):
  lines = stdout.split("delivered ", 1)[1].splitlines()[1:]
  counts = {}
  for line in lines:
    if line.startswith("  ") and ":" in line:
      reason, n = line.strip().split(":")
      counts[reason] = int(n)
  return counts


def dumped(path):
  return {json.loads(line)["key"]: json.loads(line) for line in open(path)}


def test_hostile_webdataset_corpus(tmp_path):
  jpeg = layouts.encode(layouts.photo("coffee.png").convert("RGB"), "JPEG")
  good, unusual = {}, layouts.unusual_images()
  samples = []
  for i in range(6):
    good[f"0000{i}"] = f"a cup of coffee number {i}"
    samples.append(layouts.img2dataset_sample(f"0000{i}", jpeg, good[f"0000{i}"]))
  for i, (name, data) in enumerate(unusual.items()):
    ext = "webp" if name == "webp" else "png" if name.endswith("png") or name == "gif" else "jpg"
    key = f"unusual.v2/{name}"           # a dot in the folder is part of the key
    good[key] = f"unusual {name} caf\u00e9 \U0001F600"
    samples.append(layouts.img2dataset_sample(key, data, good[key], ext=ext))
  bad = {name: data for name, (data, _) in layouts.bad_images().items()}
  samples += [
      layouts.img2dataset_sample("bad_no_image", None, "no image member"),
      layouts.img2dataset_sample("bad_empty_caption", jpeg, "   "),
      layouts.img2dataset_sample("bad_no_caption", jpeg, None),
      {"__key__": "bad_not_utf8", "jpg": jpeg, "txt": b"caf\xe9 latin-1"},
      {"__key__": "bad_json", "jpg": jpeg, "txt": "fine caption", "json": b"{not json"},
      layouts.img2dataset_sample("bad_status", jpeg, "failed one", status="failed_to_resize"),
      layouts.img2dataset_sample("bad_empty_image", bad["empty"], "empty image"),
      layouts.img2dataset_sample("bad_corrupt", bad["not_an_image"], "corrupt image"),
      layouts.img2dataset_sample("bad_truncated", bad["truncated_jpeg"], "truncated image"),
      layouts.img2dataset_sample("bad_too_large", bad["too_large"], "bomb", ext="png"),
  ]
  order = np.random.RandomState(0).permutation(len(samples))
  shards = tmp_path / "shards"
  for shard in range(3):
    layouts.write_webdataset(str(shards / f"{shard:05d}.tar"),
                             [samples[i] for i in order[shard::3]])
  # A shard cut short mid-sample (an interrupted copy): its complete samples still count.
  damaged = str(shards / "00003.tar")
  layouts.write_webdataset(damaged, [layouts.img2dataset_sample(f"cut{i}", jpeg, f"cut {i}")
                                     for i in range(3)])
  data = open(damaged, "rb").read()
  open(damaged, "wb").write(data[: data.index(b"cut 2") - 600])
  good.update({"cut0": "cut 0", "cut1": "cut 1"})
  out = inspect(tmp_path, "--format=webdataset", "--files=shards/*.tar", "--n=4",
                "--dump_jsonl=audit/delivered.jsonl", "--contact_sheet=audit/sheet.png",
                "--max_image_pixels=1000000", "--image_size=64")
  assert skip_counts(out) == {"image_missing": 1, "text_empty": 2, "text_not_utf8": 1,
                              "json_malformed": 1, "status_not_success": 1, "image_empty": 1,
                              "image_corrupt": 2, "image_too_large": 1, "file_damaged": 1}
  records = dumped(tmp_path / "audit" / "delivered.jsonl")
  assert set(records) == set(good)
  assert all(records[k]["text"] == f"<image> {good[k]}" and records[k]["num_images"] == 1
             for k in good)
  assert Image.open(tmp_path / "audit" / "sheet.png").size[0] > 0
  assert out.count("[") >= 4 and "images=1 (64x64)" in out


def test_hostile_mmc4_corpus(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  cat = layouts.encode(layouts.photo("chelsea.png").convert("RGB"), "JPEG")
  (images / "cat.jpg").write_bytes(cat)
  (images / "grey.png").write_bytes(layouts.unusual_images()["grey_png"])
  (images / "broken.jpg").write_bytes(b"\xff\xd8 broken")
  doc = layouts.mmc4_document
  good = [doc("http://good/1", ["A cat.", "It sleeps."], [("cat.jpg", 1, 0.3)]),
          doc("http://good/2", ["Grey.", "And a cat."], [("grey.png", 0, 0.3),
                                                        ("cat.jpg", 1, 0.2)]),
          doc("http://good/missing-one", ["Two pictures.", "One is gone."],
              [("cat.jpg", 0, 0.3), ("gone.jpg", 1, 0.3)]),
          doc("http://good/broken-one", ["One image is broken.", "The other is fine."],
              [("broken.jpg", 0, 0.3), ("cat.jpg", 1, 0.3)])]
  lines = [good[0], "{this is not json", good[1], [1, 2, 3],
           doc("http://bad/index", ["only one text"], [("cat.jpg", 3, 0.3)]),
           doc("http://bad/many", ["t"] * 3, [("cat.jpg", 0, 0.3)] * 51),
           doc("http://bad/no-text", ["", "  "], [("cat.jpg", 0, 0.3)]),
           good[2], good[3]]
  layouts.write_jsonl(str(tmp_path / "docs_shard_0_v2.jsonl.zip"), lines, "zip")
  out = inspect(tmp_path, "--format=mmc4", "--files=docs_shard_*_v2.jsonl.zip",
                "--image_dir=images", "--dump_jsonl=delivered.jsonl", "--image_size=32")
  assert skip_counts(out) == {"json_malformed": 1, "document_malformed": 1,
                              "matched_index_out_of_range": 1, "too_many_images": 1,
                              "no_texts": 1, "image_missing": 1, "image_corrupt": 1}
  records = dumped(tmp_path / "delivered.jsonl")
  assert set(records) == {d["url"] for d in good}
  assert records["http://good/1"]["text"] == "A cat. <image> It sleeps."
  assert records["http://good/2"]["text"] == "<image> Grey. <image> And a cat."
  assert records["http://good/missing-one"]["num_images"] == 1
  assert records["http://good/broken-one"]["text"] == "One image is broken. <image> The other is fine."


def test_hostile_parquet_corpus(tmp_path):
  png = layouts.encode(layouts.photo("camera.png"), "PNG")
  cmyk = layouts.unusual_images()["cmyk_jpeg"]
  rows = [{"key": "000000000", "caption": "camera man", "image": png},
          {"key": "000000001", "caption": "404", "image": None, "status": "failed_to_download"},
          {"key": "000000002", "caption": "cmyk cat \u00e9", "image": cmyk},
          {"key": "000000003", "caption": None, "image": png},
          {"key": "000000004", "caption": "no bytes", "image": None},
          {"key": "000000005", "caption": "junk bytes", "image": b"GIF89a junk"}]
  layouts.write_img2dataset_parquet(str(tmp_path / "00000.parquet"), rows)
  out = inspect(tmp_path, "--format=img2dataset_parquet", "--files=*.parquet",
                "--dump_jsonl=d.jsonl", "--image_size=32")
  assert skip_counts(out) == {"status_not_success": 1, "text_empty": 1, "image_missing": 1,
                              "image_corrupt": 1}
  assert set(dumped(tmp_path / "d.jsonl")) == {"000000000", "000000002"}


def test_inspect_a_registered_task_and_bad_usage(tmp_path):
  out = inspect(tmp_path, "--task=shapes_captions", "--n=2")
  assert "<image>" in out and out.startswith("[1]")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "kosmos_jax.data.inspect", "--format=mmc4",
                           "--files=none/*.jsonl", "--image_dir=."], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[0].startswith("error: mmc4")
  assert "no files match" in result.stderr
