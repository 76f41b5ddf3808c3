"""The one image recipe of training and serving: decode (JPEG/PNG/GIF/BMP, first frame, grey and
alpha to RGB), bicubic resize of the short side, centre crop to the model's square size.

Training runs it inside tf.data; `read_image_file` runs the same ops eagerly for `infer`, so a
file gives the same pixels in both (tested). CLIP mean/std normalisation happens on device in the
model.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

DEFAULT_IMAGE_SIZE = 224


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (first frame, grey/alpha to RGB)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [size, size, 3]: bicubic resize of the short side, centre crop.

  The CLIP / Kosmos-1 transform; antialiased like PIL's bicubic resize.
  """
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = tf.cast(size, tf.float32) / tf.minimum(height, width)
  new_height = tf.maximum(size, tf.cast(tf.round(height * scale), tf.int32))
  new_width = tf.maximum(size, tf.cast(tf.round(width * scale), tf.int32))

  def resize():
    resized = tf.image.resize(tf.cast(image, tf.float32), [new_height, new_width],
                              method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
  same = tf.logical_and(tf.equal(shape[0], new_height), tf.equal(shape[1], new_width))
  resized = tf.cond(same, lambda: tf.cast(image, tf.uint8), resize)
  top = (new_height - size) // 2
  left = (new_width - size) // 2
  cropped = resized[top:top + size, left:left + size]
  cropped.set_shape([size, size, 3])
  return cropped


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


def read_image_file(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3] from an image file, through exactly the training recipe."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"image {path!r} not found")
  with open(path, "rb") as f:
    encoded = f.read()
  return resize_and_center_crop(decode_image(tf.constant(encoded)), size).numpy()
