"""The one image recipe of training, evaluation and serving: decode with Pillow (JPEG, PNG, WebP,
GIF, BMP; first frame; EXIF orientation applied; grey, palette, alpha, CMYK and 16-bit to 8-bit
RGB), Pillow bicubic resize of the short side, centre crop to the model's square size.

Images larger than a pixel limit are refused from their header, before any pixel is decoded, so a
decompression bomb costs nothing. Decoding runs inside tf.data through `tf.numpy_function`;
`read_image_file` runs the same steps eagerly for `infer`, so a file gives the same pixels in
training and serving (tested). CLIP mean/std normalisation happens on device in the model.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf

DEFAULT_IMAGE_SIZE = 224
# Pixels (width x height) above which an image is refused unread; web photos are far below.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# Why an image cannot be used; code i + 1 in `decode_image_checked` is IMAGE_REASONS[i].
IMAGE_REASONS = ("image_empty", "image_corrupt", "image_too_large")
_EMPTY, _CORRUPT, _TOO_LARGE = 1, 2, 3
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
  """An image that cannot be used; `reason` is one of IMAGE_REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason.replace('_', ' ')}: {detail}")
    self.reason = reason


def _to_rgb(image: Image.Image) -> np.ndarray:
  """A loaded PIL image of any mode -> uint8 [H, W, 3]. 16-bit grey keeps its top 8 bits (a
  plain convert would clip everything above 255 to white)."""
  if image.mode in _SIXTEEN_BIT_MODES:
    grey = np.asarray(image).astype(np.int64)
    grey = np.clip(grey >> 8 if grey.max(initial=0) > 255 else grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "F":
    grey = np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"), np.uint8)


def decode_image_bytes(encoded: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       target_size: int = 0) -> np.ndarray:
  """Encoded image bytes -> uint8 [H, W, 3]; ImageError (empty, corrupt or truncated, over
  `max_pixels`) otherwise. With `target_size`, a JPEG at least 4x larger is decoded at a reduced
  DCT scale (1/2 .. 1/8) that keeps both sides >= 2 x target_size: several times faster, and the
  bicubic resize that follows still does the final step."""
  if not encoded:
    raise ImageError("image_empty", "0 bytes")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(encoded))   # reads the header only
    except Image.DecompressionBombError as e:
      raise ImageError("image_too_large", str(e)) from None
    except Exception as e:   # pylint: disable=broad-except  (Pillow raises many kinds)
      raise ImageError("image_corrupt", f"not a readable image ({type(e).__name__})") from None
    width, height = image.size
    if width * height > max_pixels:
      raise ImageError("image_too_large", f"{width}x{height} is over the limit of {max_pixels} "
                       "pixels (raise max_image_pixels to accept it)")
    if width < 1 or height < 1:
      raise ImageError("image_corrupt", f"size {width}x{height}")
    try:
      if target_size and image.format == "JPEG":
        image.draft("RGB", (2 * target_size, 2 * target_size))
      image = ImageOps.exif_transpose(image)   # also loads the (first frame's) pixels
      return _to_rgb(image)
    except Exception as e:   # pylint: disable=broad-except  (truncated data, bad EXIF, ...)
      raise ImageError("image_corrupt", f"cannot decode ({type(e).__name__}: {e})") from None


def numpy_bytes(value) -> bytes:
  """The bytes of a tf.string scalar as `tf.numpy_function` passes it (a 0-d object array)."""
  return value.item() if isinstance(value, np.ndarray) else bytes(value)


def resize_and_center_crop_array(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3]: bicubic resize of the short side to `size`,
  centre crop. Pillow's bicubic (antialiased when shrinking), as the CLIP / Kosmos processors."""
  height, width = image.shape[:2]
  if (height, width) == (size, size):
    return np.asarray(image, np.uint8)
  scale = size / min(height, width)
  new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
  resized = Image.fromarray(np.asarray(image, np.uint8))
  if (new_height, new_width) != (height, width):
    resized = resized.resize((new_width, new_height), Image.BICUBIC)
  top, left = (new_height - size) // 2, (new_width - size) // 2
  return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)


def _decode_or_code(encoded, max_pixels, size) -> tuple[np.ndarray, np.int32]:
  try:
    image = decode_image_bytes(numpy_bytes(encoded), int(max_pixels), int(size))
    if int(size) > 0:
      image = resize_and_center_crop_array(image, int(size))
    return image, np.int32(0)
  except ImageError as e:
    side = max(int(size), 1)
    return np.zeros([side, side, 3], np.uint8), np.int32(IMAGE_REASONS.index(e.reason) + 1)


def decode_image_checked(encoded: tf.Tensor, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                         size: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
  """In tf.data: encoded bytes -> (uint8 image, int32 code), resized and cropped to
  [size, size, 3] when `size` > 0 (in the same call: one trip to Python per image). Code 0 is
  a good image; i + 1 means IMAGE_REASONS[i] (the image is then black)."""
  image, code = tf.numpy_function(_decode_or_code, [encoded, max_pixels, size],
                                  (tf.uint8, tf.int32), stateful=False)
  image.set_shape([size, size, 3] if size > 0 else [None, None, 3])
  code.set_shape([])
  return image, code


def decode_and_resize(encoded: tf.Tensor, size: int,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tf.Tensor:
  """In tf.data: encoded bytes -> uint8 [size, size, 3] through the recipe; an unusable image
  raises (InvalidArgument), for pipelines that drop such records with `ignore_errors`."""
  def decode(data):
    raw = decode_image_bytes(numpy_bytes(data), max_pixels, size)
    return resize_and_center_crop_array(raw, size)
  image = tf.numpy_function(decode, [encoded], tf.uint8, stateful=False)
  image.set_shape([size, size, 3])
  return image


def resize_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """In tf.data: `resize_and_center_crop_array` on a uint8 [H, W, 3] tensor."""
  out = tf.numpy_function(lambda im: resize_and_center_crop_array(im, size), [image], tf.uint8,
                          stateful=False)
  out.set_shape([size, size, 3])
  return out


def resize_images(images: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [num, H, W, 3] -> uint8 [num, size, size, 3] (no-op when already that size)."""
  shape = tf.shape(images)
  already = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))

  def resize_all():
    return tf.map_fn(lambda im: resize_and_center_crop(im, size), images,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
  out = tf.cond(already, lambda: tf.reshape(images, [-1, size, size, 3]), resize_all)
  out.set_shape([None, size, size, 3])
  return out


def read_image_file(path: str, size: int,
                    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """uint8 [size, size, 3] from an image file, through exactly the training recipe; ImageError
  when it cannot be used."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"image {path!r} not found")
  with open(path, "rb") as f:
    encoded = f.read()
  return resize_and_center_crop_array(decode_image_bytes(encoded, max_pixels, size), size)
