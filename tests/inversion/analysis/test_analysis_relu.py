"""ReLU preimages: dimension, boundedness, projection, checked against independent computations."""

import numpy as np
import pytest

from inversion.analysis.relu import locally_injective, relu_preimage
from inversion.analysis.relu_distance import (
    distance_to_preimage,
    preimage_error_split,
    project_to_preimage,
)

EPS64 = float(np.finfo(np.float64).eps)


def _cond(A):
    """Condition number of A's nonzero singular values (1 for an empty matrix)."""
    s = np.linalg.svd(A, compute_uv=False) if A.size else np.ones(1)
    return float(s[0] / s[-1])


def _layer(rng, m, n, bias=True):
    W = rng.normal(size=(m, n))
    b = rng.normal(size=m) if bias else np.zeros(m)
    x = rng.normal(size=n)
    return W, b, x, np.maximum(W @ x + b, 0.0)


@pytest.mark.parametrize("m,n", [(3, 5), (8, 5), (10, 5), (16, 4), (40, 6)])
def test_dim_is_numpy_nullity_and_true_input_lies_in_preimage(m, n):
    rng = np.random.default_rng(m * 100 + n)
    for _ in range(5):
        W, b, x, y = _layer(rng, m, n)
        pre = relu_preimage(W, b, y)
        S = y > 0
        expected = n - (np.linalg.matrix_rank(W[S]) if S.any() else 0)
        assert pre.dim == expected
        assert pre.unique == (expected == 0)
        np.testing.assert_array_equal(pre.active, S)
        np.testing.assert_allclose(pre.jacobian, W * S[:, None], atol=0)
        assert pre.nonempty and not pre.degenerate
        # x is in P(y): the float64 projection (min-norm solve, null-space projection) moves
        # it by rounding only, ~ n cond(W_S) eps64 ||x|| (measured <= 5 eps64 ||x||)
        bound = 16 * n * _cond(W[S]) * EPS64
        assert distance_to_preimage(W, b, y, x) <= bound * np.linalg.norm(x)
        z = project_to_preimage(W, b, y, x)
        mag = np.max(np.abs(W) @ np.abs(x) + np.abs(b))
        np.testing.assert_allclose(np.maximum(W @ z + b, 0), y, rtol=0, atol=bound * mag)


def test_inverse_lipschitz_is_one_over_smallest_singular_value():
    rng = np.random.default_rng(1)
    W, b, _, y = _layer(rng, 40, 4)
    pre = relu_preimage(W, b, y)
    assert pre.unique
    s = np.linalg.svd(W[y > 0], compute_uv=False)
    # two float64 SVDs of W_S: |d s_min| <= 16 m eps64 s_max, relative cond * that
    rel = 16 * 40 * EPS64 * s[0] / s[-1]
    assert pre.inverse_lipschitz == pytest.approx(1 / s[-1], rel=rel)
    W, b, _, y = _layer(rng, 3, 4)
    assert relu_preimage(W, b, y).inverse_lipschitz == float("inf")


def test_reference_example_identity_layer():
    pre = relu_preimage(np.eye(4), None, np.array([0.0, 2.0, 0.0, 4.0]))
    np.testing.assert_array_equal(pre.active, [False, True, False, True])
    assert (pre.rank, pre.dim, pre.unique, pre.bounded) == (2, 2, False, False)
    # The ray points into the free negative coordinates 0 and 2 (float64 SVD of rows e_1, e_3
    # and an LP vertex: exact up to a few eps64).
    assert np.all(pre.ray <= 4 * EPS64) and np.all(np.abs(pre.ray[[1, 3]]) <= 4 * EPS64)


def _cone_nonzero_2d(WS, G, n_dirs=3600):
    """Brute force for n = 2: is there a unit d with W_S d = 0 and G d <= 0?"""
    t = np.linspace(0, 2 * np.pi, n_dirs, endpoint=False)
    dirs = [np.stack([np.cos(t), np.sin(t)], axis=1)]
    for g in np.vstack([WS, G]):  # the cone's edges are perpendicular to some row
        perp = np.array([-g[1], g[0]]) / max(np.linalg.norm(g), 1e-300)
        dirs.append(np.stack([perp, -perp]))
    d = np.vstack(dirs)
    # the edge directions satisfy their constraint to ~eps64; 1e-9 is far below the grid step
    ok = np.ones(len(d), bool)
    if WS.shape[0]:
        ok &= np.all(np.abs(d @ WS.T) <= 1e-9, axis=1)
    if G.shape[0]:
        ok &= np.all(d @ G.T <= 1e-9, axis=1)
    return bool(ok.any())


def test_boundedness_agrees_with_brute_force_in_2d():
    rng = np.random.default_rng(2)
    seen = set()
    for trial in range(150):
        m = 1 + trial % 6
        W, b, x, y = _layer(rng, m, 2)
        pre = relu_preimage(W, b, y)
        S = y > 0
        assert pre.bounded == (not _cone_nonzero_2d(W[S], W[~S]))
        if not pre.bounded:
            # the ray is an SVD null vector or an LP vertex (a float64 basis solve) of O(1)
            # 2-D data: residuals ~ cond * eps64 (measured 8e-16); 1e-9 allows cond up to 1e6
            assert np.allclose(W[S] @ pre.ray, 0, atol=1e-9) and np.all(W[~S] @ pre.ray <= 1e-9)
            # moving along the ray keeps the output: an unbounded family of exact inputs, up to
            # 50 times the ray's own residual and float64 rounding
            moved = x + 50 * pre.ray
            atol = 50 * np.abs(W[S] @ pre.ray).max(initial=0) + 16 * EPS64 * np.max(
                np.abs(W) @ np.abs(moved) + np.abs(b)
            )
            np.testing.assert_allclose(np.maximum(W @ moved + b, 0), y, rtol=0, atol=atol)
        seen.add(pre.bounded)
    assert seen == {True, False}


def test_constructed_bounded_and_unbounded_cases():
    # three inactive rows whose normals positively span the plane: P(0) = {0}
    W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    pre = relu_preimage(W, None, np.zeros(3))
    assert pre.bounded and pre.unique and pre.degenerate and pre.dim == 0
    # with a bias the same rows bound a triangle: bounded, 2-D, not unique
    pre = relu_preimage(W, np.full(3, -1.0), np.zeros(3))
    assert pre.bounded and pre.dim == 2 and not pre.unique and not pre.degenerate
    # two inactive rows only: a wedge, unbounded
    pre = relu_preimage(W[:2], None, np.zeros(2))
    assert not pre.bounded and pre.dim == 2


def test_distance_in_identity_case_is_known():
    y = np.array([0.0, 2.0, 0.0, 4.0])
    x = np.array([1.0, 2.0, -3.0, 5.0])  # x0 must drop to 0, x3 to 4: distance sqrt(2)
    # float64 projection onto coordinate faces of the identity: a few eps64 relative to max|x|
    assert distance_to_preimage(np.eye(4), None, y, x) == pytest.approx(np.sqrt(2), rel=16 * EPS64)
    np.testing.assert_allclose(
        project_to_preimage(np.eye(4), None, y, x), [0, 2, -3, 4], rtol=0, atol=16 * EPS64 * 5
    )
    far = np.array([1e4, 2.0, 1e4, 4.0])  # far outside: both free entries must drop to 0
    assert distance_to_preimage(np.eye(4), None, y, far) == pytest.approx(
        np.sqrt(2) * 1e4, rel=16 * EPS64
    )


def _projection_by_active_sets(A, c, G, h, x):
    """Exact Euclidean projection of ``x`` onto {z : A z = c, G z <= h} by enumerating faces.

    The projection lies in the relative interior of some face, and there it equals the
    projection onto that face's affine hull {A z = c, G_T z = h_T}. So the minimum of
    ``||z_T - x||`` over all subsets T whose affine projection z_T is feasible is the exact
    distance (every candidate is feasible, hence no closer than the projection). This is a
    closed-form reference independent of the NNLS route of ``distance_to_preimage``, with no
    third-party solver to report success. Feasibility tolerance 1e-9: the candidates come
    from a least-squares solve in float64 on O(1) data.
    """
    best = np.inf
    k = len(h)
    for mask in range(2**k):
        T = np.array([(mask >> i) & 1 for i in range(k)], dtype=bool)
        E, e = np.vstack([A, G[T]]), np.concatenate([c, h[T]])
        if E.shape[0]:
            # min ||z - x|| s.t. E z = e: z = x - E^+ (E x - e), if E z = e is consistent
            z = x - np.linalg.lstsq(E, E @ x - e, rcond=None)[0]
            if np.linalg.norm(E @ z - e) > 1e-9:
                continue
        else:
            z = x
        if np.all(G @ z <= h + 1e-9):
            best = min(best, float(np.linalg.norm(z - x)))
    return best


def test_distance_matches_exact_projection_on_small_layers():
    rng = np.random.default_rng(3)
    for m, n in [(3, 3), (5, 4), (4, 5), (2, 4), (6, 6), (7, 5)] * 2:
        W, b, _, y = _layer(rng, m, n)
        x = 2 * rng.normal(size=n)
        S = y > 0
        A, c = W[S], y[S] - b[S]
        G, h = W[~S], -b[~S]
        ref = _projection_by_active_sets(A, c, G, h, x)
        got = distance_to_preimage(W, b, y, x)
        # both are float64 solves of O(1)-conditioned systems of size <= 7
        assert got == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_empty_preimage_and_error_split():
    W = np.array([[1.0], [1.0]])
    y = np.array([1.0, 3.0])  # x = 1 and x = 3 at once: impossible
    assert not relu_preimage(W, None, y).nonempty
    assert distance_to_preimage(W, None, y, np.zeros(1)) == float("inf")
    with pytest.raises(ValueError, match="empty"):
        preimage_error_split(W, None, y, np.zeros(1), np.zeros(1))
    rng = np.random.default_rng(4)
    W, b, x, y = _layer(rng, 6, 5)
    x_rec = x + rng.normal(size=5)
    split = preimage_error_split(W, b, y, x_rec, x)
    assert split.total == np.linalg.norm(x_rec - x)  # the same float64 norm
    # exact for an exact projection; the float64 one (~ n cond eps64 ||x||) and the three
    # squared norms may cost a few eps64 total^2 (measured: holds with +1.8e-15)
    slack = 16 * 5 * _cond(W[y > 0]) * EPS64 * max(1.0, split.total**2)
    assert split.total**2 >= split.optimiser**2 + split.network**2 - slack
    assert split.network > 0  # 5 inputs, at most 6 rows half active: not identifiable


def test_bad_input_raises():
    W = np.eye(3)
    with pytest.raises(ValueError, match="W must"):
        relu_preimage(np.ones(3), None, np.ones(3))
    with pytest.raises(ValueError, match="y must have shape"):
        relu_preimage(W, None, np.ones(2))
    with pytest.raises(ValueError, match="b must have shape"):
        relu_preimage(W, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        relu_preimage(W, None, np.array([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        relu_preimage(W, None, np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        distance_to_preimage(W, None, np.ones(3), np.ones(2))


def test_locally_injective_agrees_with_unique_preimage():
    rng = np.random.default_rng(5)
    for m in (6, 12, 20):
        W, b, _, _ = _layer(rng, m, 6)
        X = rng.normal(size=(30, 6))
        mask = locally_injective(W, b, X)
        expected = [relu_preimage(W, b, np.maximum(W @ x + b, 0)).unique for x in X]
        np.testing.assert_array_equal(mask, expected)
    assert not locally_injective(np.eye(3), None, np.array([[1.0, -1.0, 2.0]]))[0]
    assert locally_injective(
        np.vstack([np.eye(2), -np.eye(2)]), None, rng.normal(size=(9, 2))
    ).all()
