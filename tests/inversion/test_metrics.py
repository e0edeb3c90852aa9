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
EPS32 = float(np.finfo(np.float32).eps)
N = REF[0].size  # 512 entries per image
# psnr in float32: the N-term mean of squares is within N u (u = eps32 / 2) relatively, i.e.
# 10 / ln 10 * N u dB, plus 4 ulps of the result (< 64 dB). References in float64.
PSNR_ATOL = 10 / np.log(10) * N * EPS32 / 2 + 4 * EPS32 * 32


def test_psnr_matches_skimage_single_and_batch():
    ref64, x64 = REF.astype(np.float64), X.astype(np.float64)
    expected = [peak_signal_noise_ratio(ref64[i], x64[i], data_range=1.0) for i in range(3)]
    tol = dict(rtol=0, atol=PSNR_ATOL)
    np.testing.assert_allclose(psnr(X[0], REF[0]), expected[0], **tol)
    np.testing.assert_allclose(psnr(X, REF, reduce=False), expected, **tol)
    np.testing.assert_allclose(psnr(X, REF), np.mean(expected), **tol)
    np.testing.assert_allclose(psnr(2 * X[0], 2 * REF[0], data_range=2.0), expected[0], **tol)
    assert np.isinf(psnr(REF[0], REF[0]))
    np.testing.assert_allclose(jax.jit(psnr)(X[0], REF[0]), expected[0], **tol)


def test_ssim_matches_skimage():
    # ssim is scikit-image's structural_similarity on float64 copies (7x7 window): the same
    # function on the same inputs, so equal bitwise to it called on float64 inputs
    ref64, x64 = REF.astype(np.float64), X.astype(np.float64)
    single = structural_similarity(x64[0], ref64[0], data_range=1.0, channel_axis=-1)
    assert ssim(X[0], REF[0]) == single
    per = [
        structural_similarity(x64[i], ref64[i], data_range=1.0, channel_axis=-1) for i in range(3)
    ]
    np.testing.assert_array_equal(ssim(X, REF, reduce=False), per)
    assert ssim(X, REF) == np.mean(per)
    gray = structural_similarity(x64[0, ..., 0], ref64[0, ..., 0], data_range=1.0)
    assert ssim(X[0, ..., 0], REF[0, ..., 0]) == gray
    # identical images: numerator and denominator of every pixel's SSIM are the same float
    # expression (2 a a = a^2 + a^2 exactly), so each ratio and their mean are exactly 1
    assert ssim(REF, REF) == 1.0
    small = RNG.uniform(size=(5, 5))  # smaller than the 7x7 window: a 5x5 window is used
    assert ssim(small, small) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(X[0], REF[1, :8])


def test_relative_error_hand_computed():
    x, ref = np.asarray([3.0, 4.0]), np.asarray([0.0, 0.0])
    assert float(relative_error(x, ref)) == 5.0  # ref = 0: absolute; sqrt(25) is exact
    ref = np.asarray([1.0, 0.0])
    # exact integer sums, one correctly rounded sqrt
    np.testing.assert_allclose(relative_error(x, ref), np.sqrt(4 + 16) / 1.0, rtol=EPS32)
    per = [
        np.linalg.norm(X[i].astype(np.float64) - REF[i]) / np.linalg.norm(REF[i]) for i in range(3)
    ]
    # two N-term sums of squares (N u each), halved by the sqrt, and a quotient
    np.testing.assert_allclose(relative_error(X, REF, reduce=False), per, rtol=(N + 2) * EPS32 / 2)
    rows = np.asarray([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(  # 0.5 / 1 and 1 / 2: exact
        relative_error(rows * 1.5, rows, batched=True, reduce=False), [0.5, 0.5]
    )


def test_dice_iou_hard_hand_computed():
    pred = np.asarray([[0.9, 0.2], [0.7, 0.6]])
    mask = np.asarray([[1, 0], [0, 1]])
    # P = {(0,0), (1,0), (1,1)}, M = {(0,0), (1,1)}: |P&M| = 2, |P| = 3, |M| = 2, |P|M| = 3
    # exact counts, one rounded quotient: rtol eps32
    np.testing.assert_allclose(dice(pred, mask), 2 * 2 / 5, rtol=EPS32)
    np.testing.assert_allclose(iou(pred, mask), 2 / 3, rtol=EPS32)
    # threshold 0.65: P = {(0,0), (1,0)}: |P&M| = 1, |P|M| = 3
    np.testing.assert_allclose(iou(pred, mask, threshold=0.65), 1 / 3, rtol=EPS32)
    empty = np.zeros((2, 2))
    assert float(dice(empty, empty)) == 1.0
    assert float(iou(empty, empty)) == 1.0


def test_dice_iou_soft_and_batch():
    pred = np.asarray([[0.9, 0.2], [0.7, 0.6]])
    mask = np.asarray([[1, 0], [0, 1]], np.float32)
    inter, sp, sm = 0.9 + 0.6, 2.4, 2.0
    # p rounded to float32 (u each), 4-term sums and a quotient: <= 16 u = 8 eps32 relative
    np.testing.assert_allclose(dice(pred, mask, soft=True), 2 * inter / (sp + sm), rtol=8 * EPS32)
    np.testing.assert_allclose(
        iou(pred, mask, soft=True), inter / (sp + sm - inter), rtol=8 * EPS32
    )
    preds = np.stack([pred, 1 - pred])[..., None]  # NHWC batch
    masks = np.stack([mask, mask])[..., None]
    per = dice(preds, masks, reduce=False)
    # hard: the counts are exact integers in any summation order, then one quotient, so a
    # batch row, a single call and a jitted call agree exactly
    np.testing.assert_allclose(per[0], 0.8, rtol=EPS32)
    assert per[1] == dice(1 - pred, mask)
    assert dice(preds, masks) == per.mean()  # mean of two: one rounded sum, halved
    np.testing.assert_array_equal(jax.jit(iou)(preds, masks), iou(preds, masks))
