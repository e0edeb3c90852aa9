"""Metrics against scikit-image and hand computation."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from inversion.metrics import dice, iou, psnr, relative_error, ssim

RNG = np.random.default_rng(3)
REF = RNG.uniform(size=(3, 16, 16, 2)).astype(np.float32)
X = np.clip(REF + 0.05 * RNG.normal(size=REF.shape), 0, 1).astype(np.float32)


def test_psnr_matches_skimage_single_and_batch():
    expected = [peak_signal_noise_ratio(REF[i], X[i], data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(psnr(X[0], REF[0]), expected[0], rtol=1e-4)
    np.testing.assert_allclose(psnr(X, REF, reduce=False), expected, rtol=1e-4)
    np.testing.assert_allclose(psnr(X, REF), np.mean(expected), rtol=1e-4)
    np.testing.assert_allclose(psnr(2 * X[0], 2 * REF[0], data_range=2.0), expected[0], rtol=1e-4)
    assert np.isinf(psnr(REF[0], REF[0]))
    np.testing.assert_allclose(jax.jit(psnr)(X[0], REF[0]), expected[0], rtol=1e-4)


def test_ssim_matches_skimage():
    single = structural_similarity(X[0], REF[0], data_range=1.0, channel_axis=-1)
    np.testing.assert_allclose(ssim(X[0], REF[0]), single, rtol=1e-6)
    per = [structural_similarity(X[i], REF[i], data_range=1.0, channel_axis=-1) for i in range(3)]
    np.testing.assert_allclose(ssim(X, REF, reduce=False), per, rtol=1e-6)
    np.testing.assert_allclose(ssim(X, REF), np.mean(per), rtol=1e-6)
    gray = structural_similarity(X[0, ..., 0], REF[0, ..., 0], data_range=1.0)
    np.testing.assert_allclose(ssim(X[0, ..., 0], REF[0, ..., 0]), gray, rtol=1e-6)
    np.testing.assert_allclose(ssim(REF, REF), 1.0, rtol=1e-6)
    small = RNG.uniform(size=(5, 5))  # smaller than the 7x7 window: a 5x5 window is used
    np.testing.assert_allclose(ssim(small, small), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(X[0], REF[1, :8])


def test_relative_error_hand_computed():
    x, ref = np.asarray([3.0, 4.0]), np.asarray([0.0, 0.0])
    np.testing.assert_allclose(relative_error(x, ref), 5.0, rtol=1e-6)  # ref = 0: absolute
    ref = np.asarray([1.0, 0.0])
    np.testing.assert_allclose(relative_error(x, ref), np.sqrt(4 + 16) / 1.0, rtol=1e-6)
    per = [np.linalg.norm(X[i] - REF[i]) / np.linalg.norm(REF[i]) for i in range(3)]
    np.testing.assert_allclose(relative_error(X, REF, reduce=False), per, rtol=1e-5)
    rows = np.asarray([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(relative_error(rows * 1.5, rows, batched=True, reduce=False),
                               [0.5, 0.5], rtol=1e-6)


def test_dice_iou_hard_hand_computed():
    pred = np.asarray([[0.9, 0.2], [0.7, 0.6]])
    mask = np.asarray([[1, 0], [0, 1]])
    # P = {(0,0), (1,0), (1,1)}, M = {(0,0), (1,1)}: |P&M| = 2, |P| = 3, |M| = 2, |P|M| = 3
    np.testing.assert_allclose(dice(pred, mask), 2 * 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(iou(pred, mask), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(iou(pred, mask, threshold=0.65), 1 / 3, rtol=1e-6)  # Pnp.testing.assert_allclose(iou(pred, mask, threshold=0.65), 1 / 2, rtol=1e-6)M=1, P|M=3
    empty = np.zeros((2, 2))
    np.testing.assert_allclose(dice(empty, empty), 1.0)
    np.testing.assert_allclose(iou(empty, empty), 1.0)


def test_dice_iou_soft_and_batch():
    pred = np.asarray([[0.9, 0.2], [0.7, 0.6]])
    mask = np.asarray([[1, 0], [0, 1]], np.float32)
    inter, sp, sm = 0.9 + 0.6, 2.4, 2.0
    np.testing.assert_allclose(dice(pred, mask, soft=True), 2 * inter / (sp + sm), rtol=1e-6)
    np.testing.assert_allclose(iou(pred, mask, soft=True), inter / (sp + sm - inter), rtol=1e-6)
    preds = np.stack([pred, 1 - pred])[..., None]  # NHWC batch
    masks = np.stack([mask, mask])[..., None]
    per = dice(preds, masks, reduce=False)
    np.testing.assert_allclose(per, [0.8, dice(1 - pred, mask)], rtol=1e-6)
    np.testing.assert_allclose(dice(preds, masks), per.mean(), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(iou)(preds, masks), iou(preds, masks), rtol=1e-6)
