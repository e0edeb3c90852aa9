"""models.from_torch: torch modules as pure JAX models (torchax), checked against torch itself.

Three small networks in eval mode with random weights and random batch-norm statistics: a
U-Net (conv, batch norm, ReLU, max pooling, transposed conv, bilinear upsampling,
concatenation), a ResNet block, and a classifier (flatten + linear).
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchax")
nn = torch.nn
F = torch.nn.functional

import models  # noqa: E402
from inversion.analysis import certify  # noqa: E402
from models.imported import torch_import  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, c_in=2, f=4):
        super().__init__()
        self.enc1 = conv_bn_relu(c_in, f)
        self.pool = nn.MaxPool2d(2)  # called twice: 'pool' and 'pool:1'
        self.enc2 = conv_bn_relu(f, 2 * f)
        self.bottleneck = conv_bn_relu(2 * f, 2 * f)
        self.up2 = nn.ConvTranspose2d(2 * f, 2 * f, 2, stride=2)
        self.dec2 = conv_bn_relu(4 * f, f)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = conv_bn_relu(2 * f, f)
        self.head = nn.Conv2d(f, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


UNET_NAMES = [
    *("enc1.0", "enc1.1", "enc1.2", "enc1", "pool"),
    *("enc2.0", "enc2.1", "enc2.2", "enc2", "pool:1"),
    *("bottleneck.0", "bottleneck.1", "bottleneck.2", "bottleneck", "up2"),
    *("dec2.0", "dec2.1", "dec2.2", "dec2", "up1"),
    *("dec1.0", "dec1.1", "dec1.2", "dec1", "head", "out"),
]


class ResBlock(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class Classifier(nn.Module):
    def __init__(self, c_in=2, f=4, size=8, classes=5):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(c_in, f), nn.MaxPool2d(2))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(f * (size // 2) ** 2, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.features(x)))


class Tiny(nn.Module):
    """72 inputs -> 27 outputs, ReLU and pooling: a Jacobian with a large null space."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(2, 3), nn.MaxPool2d(2), nn.Conv2d(3, 3, 1))

    def forward(self, x):
        return self.body(x)


def randomize(module, seed):
    """Random weights (fan-in scaled, so activations stay O(1)) and batch-norm statistics far
    from the identity (running mean != 0, var != 1), from an explicit NumPy generator."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
            scale = np.sqrt(2.0 / fan_in) if p.ndim > 1 else 0.1
            value = rng.standard_normal(tuple(p.shape)) * scale
            if name.endswith("weight") and p.ndim == 1:  # batch-norm gamma
                value = rng.uniform(0.5, 1.5, tuple(p.shape))
            p.copy_(torch.from_numpy(value))
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, sub.num_features)))
                sub.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, sub.num_features)))
    return module.eval()


NETS = {
    "unet": (lambda: UNet(), (2, 16, 16, 2)),
    "resblock": (lambda: ResBlock(), (2, 8, 8, 3)),
    "classifier": (lambda: Classifier(), (2, 8, 8, 2)),
}


def build(name, seed=0):
    make, shape = NETS[name]
    net = randomize(make(), seed)
    x = np.random.default_rng(seed + 100).standard_normal(shape).astype(np.float32)
    return net, models.from_torch(net, x), x


@pytest.fixture(scope="module")
def unet():
    return build("unet")


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.detach().numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_conformance_with_torch(name):
    net, model, x = build(name)
    report = models.conformance(model, x)
    f32, f64 = report["float32"], report["float64"]
    # Forward: the same ops on the same float32 numbers; only the summation order inside
    # convolutions and matmuls differs (sums of <= 144 terms, <= 11 layers deep): a few ulps of
    # the output scale, well below 1e-5. In float64 the same argument gives ~1e-15; 1e-10
    # leaves room and still fails on any float32 step.
    assert f32.forward_max_rel <= 1e-5, report
    assert f64.forward_max_rel <= 1e-10, report
    # VJP: the backward pass doubles the depth of rounded sums, and the cotangent is random
    # (no cancellation-free scale): allow ~100 ulps of float32 (1e-5) and ~1e-12 in float64.
    # A ReLU or max-pool decision flipped by rounding would show as an O(1) difference; with
    # these seeds no pre-activation lies within rounding of a kink.
    assert f32.vjp_max_rel <= 1e-5, report
    assert f64.vjp_max_rel <= 1e-12, report


def test_names_are_module_paths_in_forward_order(unet):
    _, model, x = unet
    assert models.layer_names(model) == UNET_NAMES
    acts = models.activations(model, x)
    assert list(acts) == UNET_NAMES
    np.testing.assert_array_equal(acts["out"], model(x))
    assert acts["pool:1"].shape == (2, 4, 4, 8)
    res = models.from_torch(randomize(ResBlock(), 1), np.zeros((1, 4, 4, 3), np.float32))
    names = ["conv1", "bn1", "relu", "conv2", "bn2", "relu:1", "out"]
    assert models.layer_names(res) == names


def test_feature_fn_matches_torch_hook(unet):
    net, model, x = unet
    seen = {}
    handle = net.enc2[1].register_forward_hook(lambda m, a, out: seen.setdefault("bn", out))
    with torch.no_grad():
        net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    handle.remove()
    want = nhwc(seen["bn"])
    fn, params = models.feature_fn(model, "enc2.1")
    got = np.asarray(jax.jit(fn)(params, x))
    # float32, three layers deep: a few ulps of the activation's scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # the second call of the shared pool: max pooling of enc2's output
    pool1 = models.feature_fn(model, "pool:1")[0](params, x)
    enc2 = models.feature_fn(model, "enc2")[0](params, x)
    np.testing.assert_array_equal(pool1, enc2.reshape(2, 4, 2, 4, 2, 8).max(axis=(2, 4)))


def count_convs(jaxpr) -> int:
    """Convolutions in a jaxpr, nested jit calls included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "conv_general_dilated"
        for value in eqn.params.values():
            sub = getattr(value, "jaxpr", value)
            n += count_convs(sub) if hasattr(sub, "eqns") else 0
    return n


def test_feature_fn_stops_early(unet):
    _, model, x = unet
    fn, params = models.feature_fn(model, "enc1")
    # enc1's conv only: nothing after the cut is traced
    assert count_convs(jax.make_jaxpr(lambda z: fn(params, z))(x).jaxpr) == 1
    assert count_convs(jax.make_jaxpr(lambda z: model.apply(params, z))(x).jaxpr) == 7


def test_hooks_and_weights_restored_after_call(unet):
    net, model, x = unet
    models.feature_fn(model, "enc2")[0](model.params, x)  # stops early from a hook
    model(x)
    assert all(not sub._forward_hooks for sub in net.modules())
    assert all(type(p) is nn.Parameter and p.device.type == "cpu" for p in net.parameters())


@pytest.mark.parametrize("name", ["unet", "classifier"])
def test_jit_vmap_equals_batch(name):
    _, model, x = build(name)
    apply, params = model.apply, model.params
    batch = apply(params, x)
    single = jax.jit(jax.vmap(lambda xi: apply(params, xi[None])[0]))(x)
    # a batch of 1 may be convolved with another summation order than a batch of 2 (and jit
    # fuses differently from eager): a few float32 ulps of the output scale
    np.testing.assert_allclose(single, batch, rtol=0, atol=10 * EPS32 * np.abs(batch).max())


def test_layout_nchw_round_trip(unet):
    net, model, x = unet
    nchw = models.from_torch(net, x.transpose(0, 3, 1, 2), layout="NCHW")
    assert nchw.input_shape == (None, 2, 16, 16)
    assert model.input_shape == (None, 16, 16, 2)
    y = nchw(jnp.asarray(x.transpose(0, 3, 1, 2)))
    for example in (torch.from_numpy(x), jnp.asarray(x)):  # torch and JAX examples too
        assert models.from_torch(net, example).input_shape == (None, 16, 16, 2)
    # the same ops on the same numbers (a transpose is exact)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 2, 3, 1), model(x), rtol=0, atol=1e-6)


def test_float64_certificate_agrees_with_torch_jacobian():
    net = randomize(Tiny(), 2)
    x = np.random.default_rng(3).standard_normal((1, 6, 6, 2))
    model = models.from_torch(net, x.astype(np.float32))
    apply, params = model.apply, model.params
    with jax.enable_x64(True):
        y = apply(params, jnp.asarray(x))
        assert y.dtype == jnp.float64
        cert = certify(lambda z: apply(params, z), jnp.asarray(x))
    assert cert.jacobian_dtype == "float64"
    net64 = net.double()
    jac = torch.autograd.functional.jacobian(net64, torch.from_numpy(x.transpose(0, 3, 1, 2)))
    jac = jac.numpy().reshape(27, 72)
    s = np.linalg.svd(jac, compute_uv=False)
    rank = np.linalg.matrix_rank(jac, tol=max(jac.shape) * EPS64 * s[0])
    assert 0 < rank < 27
    assert cert.nullity == 72 - rank
    # the singular values are invariant to the NHWC/NCHW permutations of inputs and outputs
    np.testing.assert_allclose(cert.singular_values[:27], s, rtol=0, atol=1e-12 * s[0])


def test_jit_grad_jvp_linearize_agree(unet):
    _, model, x = unet
    apply, params = model.apply, model.params
    rng = np.random.default_rng(5)
    c = rng.standard_normal((2, 16, 16, 1)).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    f = lambda z: apply(params, z)  # noqa: E731
    g = jax.jit(jax.grad(lambda z: jnp.vdot(f(z), c)))(x)
    jv = jax.jit(lambda z, t: jax.jvp(f, (z,), (t,))[1])(x, v)
    _, lin = jax.linearize(f, x)
    lv = jax.jit(lin)(v)
    # <J v, c> = <v, J^T c>: sums of 512 products in float32, each side a few ulps off
    scale = np.linalg.norm(c) * np.linalg.norm(jv)
    assert abs(float(jnp.vdot(jv, c)) - float(jnp.vdot(g, v))) <= 1e-5 * scale
    np.testing.assert_allclose(lv, jv, rtol=0, atol=1e-5 * np.abs(jv).max())


def test_bad_arguments(unet):
    net, model, x = unet
    with pytest.raises(TypeError, match="torch.nn.Module"):
        models.from_torch(lambda z: z, x)
    with pytest.raises(ValueError, match="layout"):
        models.from_torch(net, x, layout="NWHC")
    with pytest.raises(ValueError, match="does not fit.*torch raised RuntimeError"):
        models.from_torch(net, np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="batch"):
        models.from_torch(net, np.zeros((16, 16, 2), np.float32))
    with pytest.raises(TypeError, match="floating"):
        models.from_torch(net, np.zeros((1, 16, 16, 2), np.int32))
    with pytest.raises(ValueError, match="expected"):
        model(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(TypeError, match="floating"):
        model(np.zeros((1, 16, 16, 2), np.int32))


def test_training_mode_refused():
    net = randomize(UNet(), 0)
    x = np.zeros((1, 16, 16, 2), np.float32)
    net.enc2[1].train()
    with pytest.raises(ValueError, match=r"'enc2\.1'.*batch norm.*eval\(\)"):
        models.from_torch(net, x)
    net.train()
    with pytest.raises(ValueError, match="the module itself.*training mode"):
        models.from_torch(net, x)


def test_tuple_outputs_not_named_and_refused_at_the_top():
    class Pair(nn.Module):
        def forward(self, x):
            return x, 2 * x

    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.act = Pair(), nn.Tanh()

        def forward(self, x):
            a, b = self.pair(x)
            return self.act(a + b)

    x = np.zeros((1, 4, 4, 1), np.float32)
    assert models.layer_names(models.from_torch(Sum().eval(), x)) == ["act", "out"]
    with pytest.raises(ValueError, match="one tensor"):
        models.from_torch(Pair().eval(), x)


def test_float64_refuses_a_silent_float32_step():
    class Down(nn.Module):
        def forward(self, x):
            return (2 * x).float()

    model = models.from_torch(Down().eval(), np.zeros((1, 4, 4, 1), np.float32))
    assert model(np.ones((1, 4, 4, 1), np.float32)).dtype == jnp.float32
    with jax.enable_x64(True), pytest.raises(RuntimeError, match="float64 end to end"):
        model(jnp.ones((1, 4, 4, 1), jnp.float64))


def test_out_submodule_is_listed_as_out_0():
    """``self.out`` is a common name; the network's output keeps 'out', the submodule 'out:0'."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return torch.relu(self.out(x))

    model = models.from_torch(Head().eval(), np.zeros((1, 4, 4, 1), np.float32))
    assert models.layer_names(model) == ["out:0", "out"]
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 1)).astype(np.float32)
    acts = models.activations(model, x)
    np.testing.assert_array_equal(np.asarray(acts["out"]), np.maximum(np.asarray(acts["out:0"]), 0))


def test_doctests():
    result = doctest.testmod(torch_import)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("forward", "match"),
    [
        # a data-dependent shape needs concrete values
        (lambda x: x * torch.unique(x).sum(), "Concretization"),
        # so does Python control flow on a tensor's value
        (lambda x: x if float(x.sum()) > 0 else -x, "Concretization"),
    ],
)
def test_untraceable_module_is_refused_at_import_naming_the_submodule(forward, match):
    class Inner(nn.Module):
        def forward(self, x):
            return forward(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 1, 1)
            self.odd = Inner()

        def forward(self, x):
            return self.odd(self.stem(x))

    with pytest.raises(ValueError, match=r"cannot be traced.*submodule 'odd' \(Inner\)") as info:
        models.from_torch(Net().eval(), np.zeros((1, 4, 4, 1), np.float32))
    assert match in str(info.value)


def test_tensors_made_inside_forward_are_jax_tensors():
    """torch.arange / torch.ones / torch.tensor inside forward (positional terms, constant
    grids) run under torch.device('jax'), so they are traced like the rest: forward and VJP
    agree with torch in both dtypes."""

    class Positional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            h = self.conv(x)
            position = torch.arange(h.shape[-1], dtype=h.dtype) / 4.0
            return h + position + torch.ones_like(h) * torch.tensor(0.5, dtype=h.dtype)

    model = models.from_torch(Positional().eval(), np.zeros((1, 4, 4, 1), np.float32))
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype(np.float32)
    report = models.conformance(model, x)
    assert report["float32"].forward_max_rel <= 1e-6, report  # one 1x1 conv and two adds
    assert report["float64"].forward_max_rel <= 1e-14, report
    assert report["float64"].vjp_max_rel <= 1e-14, report
