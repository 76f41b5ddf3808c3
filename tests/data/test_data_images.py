"""The image recipe on real photos in unusual encodings, and on bad files, against Pillow's
own conversions as the truth."""
import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from tests.data import layouts


def decode(data, **kwargs):
  return images_lib.decode_image_bytes(data, **kwargs)


def test_unusual_valid_images_decode_to_rgb():
  unusual = layouts.unusual_images()
  for name, data in unusual.items():
    image = decode(data)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
  chelsea = np.asarray(layouts.photo("chelsea.png").convert("RGB"))
  camera = np.asarray(layouts.photo("camera.png"))
  # Grey and 16-bit grey: three equal channels, the 16-bit one its top byte (not clipped white).
  np.testing.assert_array_equal(decode(unusual["grey_png"]), np.stack([camera] * 3, -1))
  np.testing.assert_array_equal(decode(unusual["sixteen_bit_png"]), np.stack([camera] * 3, -1))
  # EXIF orientation 6: the stored landscape cat comes out as a portrait, rotated clockwise.
  rotated = decode(unusual["exif_rotated_jpeg"])
  assert rotated.shape == (chelsea.shape[1], chelsea.shape[0], 3)
  stored = np.asarray(Image.open(__import__("io").BytesIO(unusual["exif_rotated_jpeg"])))
  np.testing.assert_array_equal(rotated, np.rot90(stored, k=-1))
  # CMYK, palette and WebP are close to the original photo (lossy encodings).
  for name in ("cmyk_jpeg", "palette_png", "webp"):
    diff = np.abs(decode(unusual[name]).astype(int) - chelsea.astype(int)).mean()
    assert diff < 12, (name, diff)
  rgba = layouts.photo("astronaut.png").convert("RGBA")
  np.testing.assert_array_equal(decode(unusual["rgba_png"]), np.asarray(rgba.convert("RGB")))


def test_bad_images_are_refused_with_their_reason():
  for name, (data, reason) in layouts.bad_images().items():
    with pytest.raises(images_lib.ImageError) as error:
      decode(data, max_pixels=1_000_000)
    assert error.value.reason == reason, name


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(monkeypatch):
  data, _ = layouts.bad_images()["too_large"]

  def no_decoding(*args, **kwargs):
    raise AssertionError("pixels were decoded")
  monkeypatch.setattr(Image.Image, "load", no_decoding)
  monkeypatch.setattr(ImageOps, "exif_transpose", no_decoding)
  with pytest.raises(images_lib.ImageError, match="over the limit") as error:
    decode(data, max_pixels=1_000_000)
  assert error.value.reason == "image_too_large"


def test_the_tf_path_gives_the_same_pixels_and_codes():
  good = layouts.unusual_images()["exif_rotated_jpeg"]
  image, code = images_lib.decode_image_checked(tf.constant(good))
  np.testing.assert_array_equal(image.numpy(), decode(good))
  assert int(code) == 0
  for data, reason in layouts.bad_images().values():
    _, code = images_lib.decode_image_checked(tf.constant(data), max_pixels=1_000_000)
    assert images_lib.IMAGE_REASONS[int(code) - 1] == reason
