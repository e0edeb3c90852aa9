"""inversion.plots: each function returns a Figure with labelled axes; bad input is refused."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from inversion import plots


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_layer_curve_series_order_and_labels():
    values = {
        "skips": {"enc1": 0.1, "pool1": 0.2, "out": 0.4},
        "no skips": {"enc1": 0.3, "out": 0.9},
    }
    fig = plots.layer_curve(values, ylabel="relative error", title="t", log=True)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["enc1", "pool1", "out"]
    assert ax.get_ylabel() == "relative error" and ax.get_xlabel() == "layer"
    assert ax.get_yscale() == "log" and ax.get_title() == "t"
    lines = ax.get_lines()
    assert len(lines) == 2
    assert list(lines[1].get_xdata()) == [0, 2]  # 'no skips' lacks pool1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["skips", "no skips"]


def test_layer_curve_explicit_order_and_single_series():
    fig = plots.layer_curve({"out": 1.0, "enc1": 2.0}, ylabel="y", layers=["enc1", "out"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["enc1", "out"]
    assert ax.get_legend() is None
    assert list(ax.get_lines()[0].get_ydata()) == [2.0, 1.0]


def test_layer_curve_bad_input():
    with pytest.raises(TypeError, match="mapping"):
        plots.layer_curve([1, 2], ylabel="y")
    with pytest.raises(ValueError, match="empty"):
        plots.layer_curve({}, ylabel="y")
    with pytest.raises(ValueError, match="not in the given order"):
        plots.layer_curve({"a": 1.0, "b": 2.0}, ylabel="y", layers=["a"])
    with pytest.raises(TypeError, match="not a number"):
        plots.layer_curve({"s": {"a": "x"}}, ylabel="y")
    with pytest.raises(TypeError, match="mixed"):
        plots.layer_curve({"s": {"a": 1.0}, "b": 2.0}, ylabel="y")


@pytest.mark.parametrize("shared, bars", [(True, 1), (False, 16)])
def test_kernel_grid_panels_and_colorbars(shared, bars):
    k = np.random.default_rng(0).normal(size=(3, 3, 1, 16))
    fig = plots.kernel_grid(k, title="first layer", shared_scale=shared)
    panels = [ax for ax in _panels(fig) if ax.images]
    assert len(panels) == 16 and len(_colorbars(fig)) == bars
    assert panels[5].get_title() == "ch 5"
    text = fig.get_suptitle()
    assert "first layer" in text and ("shared scale" if shared else "per-panel scale") in text
    norm = panels[0].images[0].norm
    assert norm.vmin == -norm.vmax and norm.vcenter == 0.0
    if shared:
        assert norm.vmax == pytest.approx(np.abs(k).max())


def test_kernel_grid_channel_selection_and_errors():
    k = np.random.default_rng(0).normal(size=(3, 3, 2, 8))
    fig = plots.kernel_grid(k, channels=[7, 2], input_channel=1)
    panels = [ax for ax in _panels(fig) if ax.images]
    assert [ax.get_title() for ax in panels] == ["ch 7", "ch 2"]
    np.testing.assert_allclose(panels[0].images[0].get_array(), k[:, :, 1, 7])
    assert len([ax for ax in _panels(fig) if ax.images]) == 2
    assert len(plots.kernel_grid(k, channels=3).axes) == 3 + 1
    with pytest.raises(ValueError, match="4 dims"):
        plots.kernel_grid(np.zeros((3, 3, 16)))
    with pytest.raises(ValueError, match="channels"):
        plots.kernel_grid(k, channels=[8])
    with pytest.raises(ValueError, match="input_channel"):
        plots.kernel_grid(k, input_channel=2)
    with pytest.raises(TypeError, match="numeric"):
        plots.kernel_grid("kernel")
    fig = plots.kernel_grid(k, vmax=10.0)
    assert fig.axes[0].images[0].norm.vmax == 10.0 and "±10" in fig.get_suptitle()
    with pytest.raises(ValueError, match="vmax"):
        plots.kernel_grid(k, vmax=-1.0)


def test_weight_histograms_panels_series_and_errors():
    rng = np.random.default_rng(0)
    arrays = {"enc1": rng.normal(size=(3, 3, 1, 16)), "out": rng.normal(size=(1, 1, 16, 1))}
    fig = plots.weight_histograms(arrays, bins=10)
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, arrays, strict=True):
        assert ax.get_title().startswith(name)
        assert ax.get_xlabel() == "weight" and ax.get_ylabel() == "count"
        assert len(ax.patches) == 10
    fig = plots.weight_histograms({"trained": arrays, "init": {"enc1": arrays["enc1"]}}, bins=5)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["trained", "init"]
    assert len(fig.axes[1].patches) == 5  # only 'trained' has 'out'
    with pytest.raises(ValueError, match="bins"):
        plots.weight_histograms(arrays, bins=0)
    with pytest.raises(TypeError, match="mapping"):
        plots.weight_histograms([np.zeros(3)])
    with pytest.raises(ValueError, match="empty"):
        plots.weight_histograms({"a": np.zeros(0)})


def test_top_channels_by_variance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 4, 4, 5)) * np.array([0.1, 3.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(plots.top_channels(a, 3), [1, 4, 2])
    np.testing.assert_array_equal(plots.top_channels(a[0], 10), [1, 4, 2, 0, 3])
    with pytest.raises(ValueError, match="k must be"):
        plots.top_channels(a, 0)
    with pytest.raises(ValueError, match="dims"):
        plots.top_channels(np.zeros((4, 4)), 1)


def _rows(fig):
    return [ax for ax in fig.axes if ax.get_label().startswith("row ")]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_activation_maps_rows_top_k_and_colorbars():
    rng = np.random.default_rng(1)
    scale = 2.0 ** np.arange(16)
    acts = {
        "enc1": rng.normal(size=(3, 8, 8, 16)) * scale,
        "pool1": np.abs(rng.normal(size=(3, 4, 4, 2))),
    }
    fig = plots.activation_maps(acts, channels=4, images=0)
    rows = _rows(fig)
    assert len(rows) == 2 and len(_colorbars(fig)) == 2  # one colorbar per row
    assert [ax.get_label() for ax in rows] == ["row enc1", "row pool1"]
    assert _texts(rows[0]) == ["ch 15", "ch 14", "ch 13", "ch 12", "enc1"]
    assert _texts(rows[1]) == ["ch 0", "ch 1", "pool1"] or _texts(rows[1]) == [
        "ch 1",
        "ch 0",
        "pool1",
    ]
    mosaic = np.ma.filled(rows[0].images[0].get_array(), np.nan)
    up = 32 // 8  # maps smaller than 32 pixels are shown with repeated pixels
    np.testing.assert_allclose(mosaic[::up, : 8 * up : up], acts["enc1"][0, ..., 15])
    assert np.isnan(mosaic[:, 8 * up]).all()  # the white gap between panels
    assert "top 4 channels by variance" in fig.get_suptitle()
    assert "per-row scale" in fig.get_suptitle()
    norm = rows[0].images[0].norm
    assert norm.vcenter == 0.0 and norm.vmin == -norm.vmax
    assert norm.vmax == pytest.approx(np.abs(acts["enc1"][0][..., 12:]).max())

    fig = plots.activation_maps(acts, channels=2, images=[0, 2], shared_scale=True)
    rows = _rows(fig)
    assert len(rows) == 2 * 2 and len(_colorbars(fig)) == 1
    assert "image 2" in rows[-1].get_label()
    labelled = plots.activation_maps(acts, channels=1, images=[0, 1], image_labels="abc")
    assert [ax.get_label() for ax in _rows(labelled)][-1] == "row pool1\nb"
    with pytest.raises(ValueError, match="image_labels"):
        plots.activation_maps(acts, images=[0, 1], image_labels=["a"])
    assert "shared scale" in fig.get_suptitle()
    assert len({ax.images[0].norm.vmax for ax in rows}) == 1


def test_activation_maps_bad_input():
    acts = {"enc1": np.zeros((2, 4, 4, 3))}
    with pytest.raises(ValueError, match="images"):
        plots.activation_maps(acts, images=2)
    with pytest.raises(ValueError, match="channels"):
        plots.activation_maps(acts, channels=0)
    with pytest.raises(ValueError, match="dims"):
        plots.activation_maps({"enc1": np.zeros((4, 4))})
    with pytest.raises(TypeError, match="mapping"):
        plots.activation_maps(np.zeros((2, 4, 4, 3)))


def test_no_pyplot_figures_left_open():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.layer_curve({"a": 1.0}, ylabel="y")
    plots.kernel_grid(np.ones((3, 3, 1, 2)))
    plots.weight_histograms({"a": np.ones(3)})
    plots.activation_maps({"a": np.ones((4, 4, 2))})
    assert plt.get_fignums() == before
