"""Photometric view augmentations of BYOL (used by SoCo, §3.2) and MoCo-v2 (used by OAC, §4.1).

One :class:`PhotometricAugmentation` is the colour part of one view's pipeline: colour jitter, grayscale,
Gaussian blur, solarization, each applied with its own probability (0 disables the op). Random crops are not
here: SoCo builds its crops itself (§3.2 "we discard the random crop augmentation") and OAC crops around
objects. Horizontal flip is not here either, because it is geometry and must move boxes: mappers take it from
``detectron2.data.transforms.RandomFlip`` so boxes go through the same ``Transform``.

The ops run on small uint8 H x W x 3 arrays (a view after resizing; CHW tensors are accepted too) with
OpenCV, several times faster than torchvision's tensor ops at this size (OpenCV's blur is a separable filter,
torchvision's a 2-D convolution: 20x at kernel 23). They compute what torchvision's functional ops compute
(same formulas, grey weights, reflect padding) to within 2 grey levels, as tests/test_soco_mapper.py checks.

Random draws use NumPy's global RNG, as Detectron2's augmentations do. The pretraining loader seeds it for every
sample from ``cfg.SEED`` and the sample's position in the stream (``objpretrain/data/samplers.py``), so a run,
and a resumed run, is reproducible whatever the worker count.

BYOL's two views (BYOL Table 6, used by SoCo): ``build_byol_augmentations(cfg.INPUT.SOCO)``. MoCo-v2's view
(one pipeline for both views)::

    PhotometricAugmentation(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
                            blur_prob=0.5, solarize_prob=0.0)
"""
import cv2
import numpy as np
import torch

__all__ = [
    "PhotometricAugmentation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "build_byol_augmentations",
]


class PhotometricAugmentation:
    """The colour augmentations of one view, applied to a uint8 RGB ``H x W x 3`` array or ``3 x H x W`` tensor.

    Args:
        color_jitter: (brightness, contrast, saturation, hue) strengths as in torchvision's ``ColorJitter``:
            factors uniform in [1 - s, 1 + s] (hue: shift uniform in [-s, s]), applied in a random order.
        color_jitter_prob: probability of applying the colour jitter.
        grayscale_prob: probability of converting to (3-channel) grayscale.
        blur_prob: probability of a Gaussian blur with sigma uniform in ``blur_sigma``.
        blur_kernel_fraction: blur kernel size as a fraction of the view's side, rounded up to odd
            (BYOL: 23 px for 224 px views, i.e. 10%).
        solarize_prob: probability of inverting the pixels at or above ``solarize_threshold``.
    """

    def __init__(
        self,
        *,
        color_jitter=(0.4, 0.4, 0.2, 0.1),
        color_jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=1.0,
        blur_sigma=(0.1, 2.0),
        blur_kernel_fraction=0.1,
        solarize_prob=0.0,
        solarize_threshold=128,
    ):
        if len(color_jitter) != 4:
            raise ValueError(f"color_jitter needs (brightness, contrast, saturation, hue), got {color_jitter}")
        for name, prob in [
            ("color_jitter_prob", color_jitter_prob),
            ("grayscale_prob", grayscale_prob),
            ("blur_prob", blur_prob),
            ("solarize_prob", solarize_prob),
        ]:
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be a probability, got {prob}")
        if not 0.0 <= color_jitter[3] <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {color_jitter[3]}")
        self.brightness, self.contrast, self.saturation, self.hue = (float(s) for s in color_jitter)
        self.color_jitter_prob = float(color_jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = tuple(float(s) for s in blur_sigma)
        self.blur_kernel_fraction = float(blur_kernel_fraction)
        self.solarize_prob = float(solarize_prob)
        self.solarize_threshold = int(solarize_threshold)

    def __repr__(self):
        return (
            f"{type(self).__name__}(color_jitter=({self.brightness}, {self.contrast}, {self.saturation}, "
            f"{self.hue}), color_jitter_prob={self.color_jitter_prob}, grayscale_prob={self.grayscale_prob}, "
            f"blur_prob={self.blur_prob}, blur_sigma={self.blur_sigma}, solarize_prob={self.solarize_prob})"
        )

    def __call__(self, image):
        """``image``: uint8 RGB, an ``H x W x 3`` array or a ``3 x H x W`` tensor; returns the same kind."""
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a uint8 3xHxW tensor, got {image.dtype} {tuple(image.shape)}")
            augmented = self(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
            return torch.from_numpy(np.ascontiguousarray(augmented.transpose(2, 0, 1)))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 array, got {image.dtype} {image.shape}")
        if np.random.rand() < self.color_jitter_prob:
            image = self._color_jitter(image)
        if np.random.rand() < self.grayscale_prob:
            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        if np.random.rand() < self.blur_prob:
            image = self._blur(image)
        if np.random.rand() < self.solarize_prob:
            image = np.where(image >= self.solarize_threshold, 255 - image, image)
        return image

    def _color_jitter(self, image):
        # In float, so the four ops in a row round once instead of four times.
        rgb = image.astype(np.float32) * (1.0 / 255.0)
        for op_index in np.random.permutation(4):
            if op_index == 0 and self.brightness > 0:
                rgb = adjust_brightness(rgb, _jitter_factor(self.brightness))
            elif op_index == 1 and self.contrast > 0:
                rgb = adjust_contrast(rgb, _jitter_factor(self.contrast))
            elif op_index == 2 and self.saturation > 0:
                rgb = adjust_saturation(rgb, _jitter_factor(self.saturation))
            elif op_index == 3 and self.hue > 0:
                rgb = adjust_hue(rgb, float(np.random.uniform(-self.hue, self.hue)))
        return (rgb * 255.0 + 0.5).astype(np.uint8)

    def _blur(self, image):
        side = min(image.shape[:2])
        kernel = int(np.ceil(self.blur_kernel_fraction * side)) // 2 * 2 + 1
        sigma = float(np.random.uniform(*self.blur_sigma))
        # BORDER_REFLECT_101 is torchvision's "reflect" padding.
        return cv2.GaussianBlur(image, (kernel, kernel), sigmaX=sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT_101)


def _jitter_factor(strength):
    return float(np.random.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


# torchvision.transforms.v2.functional's colour ops, on float32 H x W x 3 RGB arrays in [0, 1] through OpenCV
# (tests/test_soco_mapper.py checks them against torchvision).


def _gray(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # 0.299 R + 0.587 G + 0.114 B, as torchvision


def adjust_brightness(rgb, factor):
    return np.clip(rgb * factor, 0.0, 1.0)


def adjust_contrast(rgb, factor):
    return np.clip(rgb * factor + (1.0 - factor) * float(_gray(rgb).mean()), 0.0, 1.0)


def adjust_saturation(rgb, factor):
    return np.clip(rgb * factor + (1.0 - factor) * _gray(rgb)[..., None], 0.0, 1.0)


def adjust_hue(rgb, shift):
    """Hue moved by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # float input: hue in degrees, [0, 360)
    hsv[..., 0] = (hsv[..., 0] + shift * 360.0) % 360.0
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def build_byol_augmentations(input_cfg):
    """BYOL's (first view, second view) colour pipelines from a node with COLOR_JITTER, COLOR_JITTER_PROB,
    GRAYSCALE_PROB, BLUR_PROB (pair), BLUR_SIGMA and SOLARIZE_PROB (pair), e.g. ``cfg.INPUT.SOCO``."""
    return [
        PhotometricAugmentation(
            color_jitter=tuple(input_cfg.COLOR_JITTER),
            color_jitter_prob=input_cfg.COLOR_JITTER_PROB,
            grayscale_prob=input_cfg.GRAYSCALE_PROB,
            blur_prob=input_cfg.BLUR_PROB[view],
            blur_sigma=tuple(input_cfg.BLUR_SIGMA),
            solarize_prob=input_cfg.SOLARIZE_PROB[view],
        )
        for view in (0, 1)
    ]
