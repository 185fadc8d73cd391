"""Public API of relssl.losses: names, signatures (the README table), docstrings, dtypes, autocast."""

from __future__ import annotations

import inspect

import pytest
import torch

import relssl.losses as L

_EMPTY = inspect.Parameter.empty

# name -> [(parameter, default)] exactly as in methods/README.md (public API)
TABLE = {
    "ntxent_loss": [("z1", _EMPTY), ("z2", _EMPTY), ("temperature", 0.5)],
    "moco_loss": [("q", _EMPTY), ("k", _EMPTY), ("queue", _EMPTY), ("temperature", 0.2)],
    "byol_loss": [("p1", _EMPTY), ("p2", _EMPTY), ("zt1", _EMPTY), ("zt2", _EMPTY)],
    "supcon_loss": [("features", _EMPTY), ("labels", None), ("temperature", 0.07),
                    ("base_temperature", 0.07), ("variant", "out")],
    "nnclr_loss": [("z1", _EMPTY), ("z2", _EMPTY), ("p1", _EMPTY), ("p2", _EMPTY), ("support", _EMPTY),
                   ("temperature", 0.1), ("symmetrize", False)],
    "msf_loss": [("p", _EMPTY), ("t", _EMPTY), ("bank", _EMPTY), ("topk", 5)],
    "msvq_loss": [("z1", _EMPTY), ("z2", _EMPTY), ("z3", _EMPTY), ("z4", _EMPTY), ("queue1", _EMPTY),
                  ("queue2", _EMPTY), ("tau_t", 0.04), ("tau_s", 0.1)],
    "ascl_targets": [("k", _EMPTY), ("queue", _EMPTY), ("t2", 0.05), ("nn_num", 1), ("relation", "ascl")],
    "ascl_loss": [("q", _EMPTY), ("k", _EMPTY), ("queue", _EMPTY), ("t1", 0.1), ("t2", 0.05), ("nn_num", 1),
                  ("relation", "ascl")],
    "ascl_byol_loss": [("h", _EMPTY), ("k", _EMPTY), ("t2", 0.05), ("nn_num", 1)],
    "wcl_loss": [("a1", _EMPTY), ("a2", _EMPTY), ("g1", _EMPTY), ("g2", _EMPTY), ("temperature", 0.1),
                 ("graph_weight", 1.0), ("detach_candidates", True)],
    "pseudo_nn": [("q", _EMPTY), ("support", _EMPTY), ("t", 0.95), ("noise", None)],
    "pnnclr_loss": [("a", _EMPTY), ("b", _EMPTY), ("support", _EMPTY), ("temperature", 0.1), ("t", 0.95),
                    ("noises", None), ("reduction", "mean")],
    "bsim_infonce_loss": [("q_mix", _EMPTY), ("keys", _EMPTY), ("perm", _EMPTY), ("lam", _EMPTY),
                          ("temperature", _EMPTY), ("negatives", None)],
    "bsim_byol_loss": [("p_mix", _EMPTY), ("z_target", _EMPTY), ("perm", _EMPTY), ("lam", _EMPTY)],
    "byol_regression": [("p", _EMPTY), ("z", _EMPTY)],
    "connected_components": [("edges_or_nn_index", _EMPTY)],
}


def test_all_exports():
    assert set(TABLE) <= set(L.__all__)
    for name in L.__all__:
        assert hasattr(L, name)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_signature_matches_table_and_extras_are_keyword_or_trailing(name):
    params = list(inspect.signature(getattr(L, name)).parameters.values())
    expected = TABLE[name]
    head = [(p.name, p.default) for p in params[: len(expected)]]
    assert head == expected
    for p in params[: len(expected)]:
        assert p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
    for p in params[len(expected):]:  # optional extras only, after the public ones
        assert p.default is not _EMPTY


@pytest.mark.parametrize("name", sorted(TABLE))
def test_docstrings_cite_the_spec(name):
    doc = inspect.getdoc(getattr(L, name))
    assert doc and len(doc) > 200
    if name != "connected_components":
        assert "Spec" in doc and "Returns" in doc


def test_errors_are_value_errors_and_relssl_errors():
    from relssl.errors import RelsslError

    with pytest.raises(ValueError) as info:
        L.moco_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), temperature=0)
    assert isinstance(info.value, RelsslError)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# dtypes and autocast
# ----------------------------------------------------------------------------------------------


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    n, d, k = 8, 16, 32
    x = {name: r(n, d) for name in ("a", "b", "c", "e")}
    queue, queue2 = r(k, d), r(k, d)
    perm = torch.randperm(n, generator=g)
    lam = torch.rand(n, generator=g)
    f = lambda *t: tuple(t)  # noqa: E731
    return {
        "ntxent_loss": (L.ntxent_loss, f(x["a"], x["b"]), {}),
        "moco_loss": (L.moco_loss, f(x["a"], x["b"], queue), {}),
        "byol_loss": (L.byol_loss, f(x["a"], x["b"], x["c"], x["e"]), {}),
        "supcon_loss": (L.supcon_loss, f(torch.stack([x["a"], x["b"]], 1)), {"labels": torch.arange(n) % 3}),
        "nnclr_loss": (L.nnclr_loss, f(x["a"], x["b"], x["c"], x["e"], queue), {}),
        "msf_loss": (L.msf_loss, f(x["a"], x["b"], torch.cat([x["b"], queue])), {}),
        "msvq_loss": (L.msvq_loss, f(x["a"], x["b"], x["c"], x["e"], queue, queue2), {}),
        "ascl_targets": (L.ascl_targets, f(x["b"], queue), {}),
        "ascl_loss": (L.ascl_loss, f(x["a"], x["b"], queue), {"nn_num": 3}),
        "ascl_byol_loss": (L.ascl_byol_loss, f(x["a"], x["b"]), {}),
        "wcl_loss": (L.wcl_loss, f(x["a"], x["b"], x["c"], x["e"]), {}),
        "pseudo_nn": (L.pseudo_nn, f(x["a"], queue), {}),
        "pnnclr_loss": (L.pnnclr_loss, f(x["a"], x["b"], queue), {}),
        "bsim_infonce_loss": (L.bsim_infonce_loss, f(x["a"], x["b"], perm, lam, 0.2), {"negatives": queue}),
        "bsim_byol_loss": (L.bsim_byol_loss, f(x["a"], x["b"], perm, lam), {}),
        "byol_regression": (L.byol_regression, f(x["a"], x["b"]), {}),
    }


CASES = _cases()


def _cast(args, kwargs, dtype):
    conv = lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
    return tuple(conv(a) for a in args), {key: conv(v) for key, v in kwargs.items()}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_inputs_give_float32_results(name, low):
    fn, args, kwargs = CASES[name]
    ref32 = fn(*args, **kwargs)
    largs, lkwargs = _cast(args, kwargs, low)
    out = fn(*largs, **lkwargs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if name not in ("ascl_targets", "pseudo_nn"):
        assert out.dim() == 0
    # exactly the float32 computation on the rounded inputs ...
    uargs, ukwargs = _cast(largs, lkwargs, torch.float32)
    assert torch.allclose(out, fn(*uargs, **ukwargs), rtol=1e-6, atol=1e-6)
    # ... and close to the float32 result on the original inputs
    assert torch.allclose(out, ref32, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_autocast_does_not_change_the_value(name):
    fn, args, kwargs = CASES[name]
    plain = fn(*args, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fn(*args, **kwargs)
    assert auto.dtype == torch.float32
    assert torch.allclose(auto, plain, rtol=1e-6, atol=1e-6)


def test_float64_stays_float64_and_gradient_under_autocast():
    q = torch.randn(4, 5, dtype=torch.float64)
    assert L.moco_loss(q, q, torch.randn(6, 5, dtype=torch.float64)).dtype == torch.float64
    p = torch.randn(4, 5, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = L.ntxent_loss(p, p.detach().clone())
    (grad,) = torch.autograd.grad(loss, [p])
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_cpu_also_under_autocast(name):
    fn, args, kwargs = CASES[name]
    cpu = fn(*args, **kwargs)
    move = lambda v: v.cuda() if isinstance(v, torch.Tensor) else v  # noqa: E731
    cargs, ckwargs = tuple(move(a) for a in args), {key: move(v) for key, v in kwargs.items()}
    out = fn(*cargs, **ckwargs)
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.float16):
        auto = fn(*cargs, **ckwargs)
    assert auto.dtype == torch.float32
    assert torch.allclose(auto.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_connected_components_on_cuda():
    nn = torch.tensor([1, 0, 0, 4, 3, 4, 7, 6], device="cuda")
    labels = L.connected_components(nn)
    assert labels.device.type == "cuda"
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
