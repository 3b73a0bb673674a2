"""torch ``nn.GRU`` through ``tvm.relax.frontend.torch.from_exported_program`` with tvm_gru's convert map."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

import tvm_gru.relax as tr  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class GRUNet(torch.nn.Module):
    def __init__(self, input_size=8, hidden=16, layers=1, bidirectional=False, batch_first=False, bias=True,
                 linear=True):
        super().__init__()
        self.gru = torch.nn.GRU(input_size, hidden, num_layers=layers, bidirectional=bidirectional,
                                batch_first=batch_first, bias=bias)
        self.lin = torch.nn.Linear(hidden * (2 if bidirectional else 1), 4) if linear else None

    def forward(self, x, h=None):
        y, h_n = self.gru(x, h)
        return (self.lin(y) if self.lin is not None else y), h_n


def _inputs(net, batch, steps, with_h0, seed=0):
    g = torch.Generator().manual_seed(seed)
    gru = net.gru
    shape = (batch, steps, gru.input_size) if gru.batch_first else (steps, batch, gru.input_size)
    x = torch.randn(*shape, generator=g)
    if not with_h0:
        return (x,)
    d = 2 if gru.bidirectional else 1
    return (x, torch.randn(gru.num_layers * d, batch, gru.hidden_size, generator=g))


def _run(mod, args):
    vm = tvm.relax.VirtualMachine(tr.compile(mod), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return [out[i].numpy() for i in range(len(out))]


def _check(net, args, out):
    with torch.no_grad():
        ref = net(*args)
    assert len(out) == 2
    for got, want in zip(out, ref):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)


CASES = {
    "1layer": dict(layers=1),
    "2layers_h0": dict(layers=2, h0=True),
    "bidirectional": dict(bidirectional=True),
    "batch_first_h0": dict(batch_first=True, h0=True),
    "2layers_bidirectional_batch_first_h0": dict(layers=2, bidirectional=True, batch_first=True, h0=True),
    "no_bias_bidirectional": dict(bias=False, bidirectional=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gru_linear_matches_torch(name):
    case = dict(CASES[name])
    h0 = case.pop("h0", False)
    torch.manual_seed(1)
    net = GRUNet(**case).eval()
    args = _inputs(net, batch=1, steps=7, with_h0=h0)
    ep = torch.export.export(net, args)
    _check(net, args, _run(tr.from_exported_program(ep), args))


def test_gru_batch3_matches_torch():
    torch.manual_seed(2)
    net = GRUNet(layers=2, bidirectional=True, batch_first=True, linear=False).eval()
    args = _inputs(net, batch=3, steps=6, with_h0=True)
    _check(net, args, _run(tr.from_exported_program(torch.export.export(net, args)), args))


def test_gru_batch2_linear_default_schedule():
    torch.manual_seed(3)
    net = GRUNet(layers=1, batch_first=True).eval()
    args = _inputs(net, batch=2, steps=5, with_h0=False)
    _check(net, args, _run(tr.from_exported_program(torch.export.export(net, args)), args))


def test_convert_map_with_tvm_importer():
    """The plain convert map with TVM's own function: pre-decomposed program, run_ep_decomposition=False."""
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(4)
    net = GRUNet(layers=2, bidirectional=True).eval()
    args = _inputs(net, batch=1, steps=5, with_h0=True)
    ep = torch.export.export(net, args).run_decompositions(tr.torch_frontend.decomposition_table())
    mod = from_exported_program(ep, run_ep_decomposition=False,
                                custom_convert_map=tr.torch_convert_map(exported_program=ep))
    text = mod.script()
    assert "tvm_gru_sequence" in text
    _check(net, args, _run(mod, args))


def test_convert_map_without_program_refuses():
    from tvm.relax.frontend.torch import from_exported_program

    net = GRUNet().eval()
    args = _inputs(net, batch=1, steps=4, with_h0=False)
    ep = torch.export.export(net, args).run_decompositions(tr.torch_frontend.decomposition_table())
    with pytest.raises(ValueError, match="exported_program"):
        from_exported_program(ep, run_ep_decomposition=False, custom_convert_map=tr.torch_convert_map())


def test_torch_gru_weights_layout():
    h, i = 3, 2
    w_ih = np.arange(3 * h * i, dtype="float32").reshape(3 * h, i)
    w_hh = np.arange(3 * h * h, dtype="float32").reshape(3 * h, h)
    b = np.arange(3 * h, dtype="float32")
    kernel, recurrent, bias = tr.torch_frontend.torch_gru_weights(w_ih, w_hh, b, b + 100)
    assert kernel.shape == (i, 3 * h) and recurrent.shape == (h, 3 * h) and bias.shape == (2, 3 * h)
    np.testing.assert_array_equal(kernel[:, :h], w_ih[h:2 * h].T)       # z
    np.testing.assert_array_equal(kernel[:, h:2 * h], w_ih[:h].T)       # r
    np.testing.assert_array_equal(recurrent[:, 2 * h:], w_hh[2 * h:].T)  # h / n
    np.testing.assert_array_equal(bias[1, :h], b[h:2 * h] + 100)


def test_model_from_torch():
    from tvm_gru.models.model import Model

    torch.manual_seed(5)
    net = GRUNet(layers=2, bidirectional=True, batch_first=True).eval()
    args = _inputs(net, batch=1, steps=6, with_h0=True)
    model = Model.from_torch(net, args)
    assert model.input_names == ["x", "h"]
    assert model.output_names == ["output_0", "output_1"]
    out = model(*[a.numpy() for a in args])
    _check(net, args, out)


class LastStep(torch.nn.Module):
    """The usual heads on a GRU: ``y[:, -1]`` and ``h_n[-1]`` (negative ``aten.select.int``), and positive ones."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)

    def forward(self, x):
        y, h_n = self.gru(x)
        return y[:, -1], y[:, 2], h_n[-1], h_n[-2], y[-1]


def test_negative_select_reads_from_the_end():
    # TVM 0.27's own select converter took index -1 as it is (take, "fast" mode): 9e34 read out of bounds
    from tvm_gru.models.model import Model

    torch.manual_seed(6)
    net = LastStep().eval()
    x = _inputs(net, batch=1, steps=5, with_h0=False)
    with torch.no_grad():
        want = [t.numpy() for t in net(*x)]
    got = Model.from_torch(net, x)(x[0].numpy())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
