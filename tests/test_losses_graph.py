"""connected_components and wcl_loss: hand-made graphs, hand values, loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relssl.losses import connected_components, ntxent_loss, wcl_loss
from relssl.losses.graph import nn_graph_labels
from loss_helpers import E, lse, t64, unit


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------


def union_find_labels(n, edges):
    """Component labels numbered by smallest node, with a plain Python union-find."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    roots, labels = {}, []
    for i in range(n):
        r = find(i)
        if r not in roots:
            roots[r] = len(roots)
        labels.append(roots[r])
    return labels


def ref_nn_labels(b):
    n = b.shape[0]
    rows = [unit(b[i]) for i in range(n)]
    edges = []
    for i in range(n):
        j = max((j for j in range(n) if j != i), key=lambda j: float(rows[i] @ rows[j]))
        edges.append((i, j))
    return union_find_labels(n, edges)


def ref_ntxent(z1, z2, tau):
    u = [unit(z1[i]) for i in range(z1.shape[0])] + [unit(z2[i]) for i in range(z2.shape[0])]
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        others = [float(u[a] @ u[c]) / tau for c in range(2 * n) if c != a]
        total += -(float(u[a] @ u[(a + n) % (2 * n)]) / tau - lse(others))
    return total / (2 * n)


def ref_supcon_within(g, labels, tau, detach):
    """Torch scalar built row by row (so autograd gives the reference gradient)."""
    n = g.shape[0]
    rows = [g[i] / g[i].norm() for i in range(n)]
    total = 0.0
    for i in range(n):
        cand = [(rows[j].detach() if detach else rows[j]) for j in range(n)]
        sims = {j: (rows[i] * cand[j]).sum() / tau for j in range(n) if j != i}
        log_z = torch.logsumexp(torch.stack(list(sims.values())), dim=0)
        pos = [j for j in sims if labels[j] == labels[i]]
        total = total - sum(sims[p] - log_z for p in pos) / max(len(pos), 1)
    return total / n


def ref_wcl(a1, a2, g1, g2, tau, weight, detach, swap=True):
    y1, y2 = ref_nn_labels(g1.detach()), ref_nn_labels(g2.detach())
    if not swap:
        y1, y2 = y2, y1
    graph = 0.5 * (ref_supcon_within(g1, y2, tau, detach) + ref_supcon_within(g2, y1, tau, detach))
    return ref_ntxent(a1.detach(), a2.detach(), tau) + weight * graph


# ----------------------------------------------------------------------------------------------
# connected_components
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nn_index", "expected"),
    [
        ([1, 0, 3, 2], [0, 0, 1, 1]),  # two pairs
        ([2, 3, 0, 1], [0, 1, 0, 1]),  # interleaved pairs
        ([1, 2, 3, 2], [0, 0, 0, 0]),  # chain 0-1-2-3
        ([4, 0, 1, 2, 3], [0, 0, 0, 0, 0]),  # one cycle
        ([1, 0, 0, 4, 3, 4, 7, 6], [0, 0, 0, 1, 1, 1, 2, 2]),  # several components
        ([5, 5, 5, 5, 5, 4], [0, 0, 0, 0, 0, 0]),  # star: one big component
    ],
)
def test_connected_components_hand_graphs(nn_index, expected):
    labels = connected_components(torch.tensor(nn_index))
    assert labels.dtype == torch.long
    assert labels.tolist() == expected


def test_connected_components_edge_list_and_isolated_nodes():
    edges = torch.tensor([[0, 2], [4, 3]])
    assert connected_components(edges, num_nodes=6).tolist() == [0, 1, 0, 2, 2, 3]
    assert connected_components(edges).tolist() == [0, 1, 0, 2, 2]
    assert connected_components(torch.zeros(0, 2, dtype=torch.long), num_nodes=3).tolist() == [0, 1, 2]
    assert connected_components(torch.zeros(0, dtype=torch.long)).tolist() == []


def test_connected_components_long_shuffled_chain():
    n = 3000
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=g)  # a path visiting the nodes in random order
    edges = torch.stack([order[:-1], order[1:]], dim=1)
    assert connected_components(edges, num_nodes=n).unique().tolist() == [0]
    # the same path as a 1-NN index (every node points to its successor, the last to its predecessor)
    nn = torch.empty(n, dtype=torch.long)
    nn[order[:-1]] = order[1:]
    nn[order[-1]] = order[-2]
    assert connected_components(nn).unique().tolist() == [0]


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(1, 25).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30))))
def test_connected_components_matches_union_find(case):
    n, edges = case
    t = torch.tensor(edges, dtype=torch.long).reshape(-1, 2)
    assert connected_components(t, num_nodes=n).tolist() == union_find_labels(n, edges)


@pytest.mark.parametrize("nn_index", [
    [1, 0, 3, 2], [2, 3, 0, 1], [1, 2, 3, 2], [4, 0, 1, 2, 3], [1, 0, 0, 4, 3, 4, 7, 6], [5, 5, 5, 5, 5, 4],
    [0], [0, 1, 2], [1, 1],  # self-loops: a node alone is its own component
])
def test_nn_graph_labels_hand_graphs(nn_index):
    ids = nn_graph_labels(torch.tensor(nn_index))
    comp = connected_components(torch.tensor(nn_index))
    assert ids.dtype == torch.long and ids.shape == comp.shape
    # the same partition: two nodes share an id exactly when they share a component
    assert torch.equal(ids[:, None] == ids[None, :], comp[:, None] == comp[None, :])


def test_nn_graph_labels_ids_are_the_smallest_node_on_each_cycle():
    # 0 -> 1 -> 2 -> 3 -> 1 (cycle 1, 2, 3 with a tail from 0); 6 -> 5 -> 4 -> 5 (cycle 4, 5)
    assert nn_graph_labels(torch.tensor([1, 2, 3, 1, 5, 4, 5])).tolist() == [1, 1, 1, 1, 4, 4, 4]


@settings(max_examples=80, deadline=None, database=None)
@given(st.integers(1, 40).flatmap(lambda n: st.lists(st.integers(0, n - 1), min_size=n, max_size=n)))
def test_nn_graph_labels_match_connected_components_on_any_functional_graph(nn_index):
    t = torch.tensor(nn_index, dtype=torch.long)
    ids, comp = nn_graph_labels(t), connected_components(t)
    assert torch.equal(ids[:, None] == ids[None, :], comp[:, None] == comp[None, :])


def test_nn_graph_labels_long_shuffled_chain_and_bad_input():
    n = 3000
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    nn = torch.empty(n, dtype=torch.long)
    nn[order[:-1]] = order[1:]
    nn[order[-1]] = order[-2]
    assert nn_graph_labels(nn).unique().numel() == 1  # tail of 2998 nodes onto a 2-cycle
    with pytest.raises(ValueError, match="nn_graph_labels: nn_index must be a 1-D integer tensor"):
        nn_graph_labels(torch.zeros(3, 2, dtype=torch.long))


def test_one_nn_graph_components_have_at_least_two_nodes():
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 10, 64):
        x = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        sim = (x @ x.T).fill_diagonal_(-float("inf"))
        labels = connected_components(sim.argmax(1))
        assert torch.bincount(labels).min() >= 2


def test_connected_components_errors():
    with pytest.raises(ValueError, match=r"connected_components: edges_or_nn_index must be an integer tensor"):
        connected_components(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"connected_components: edges_or_nn_index must have shape \(N,\) or \(E, 2\)"):
        connected_components(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"connected_components: node indices must lie in \[0, 3\)"):
        connected_components(torch.tensor([1, 0, 3]))
    with pytest.raises(ValueError, match=r"connected_components: num_nodes must be an int >= 3"):
        connected_components(torch.tensor([[0, 2]]), num_nodes=2)


# ----------------------------------------------------------------------------------------------
# WCL
# ----------------------------------------------------------------------------------------------


def _wcl_hand_inputs():
    a = t64([[1, 0], [0, 1], [-1, 0], [0, -1]])
    g1 = t64([[1, 0, 0], [0.8, 0.6, 0], [-1, 0, 0], [-0.8, -0.6, 0]])  # 1-NN components {0,1}, {2,3}
    g2 = t64([[1, 0, 0], [0, 1, 0], [0.8, 0, 0.6], [0, 0.8, 0.6]])  # 1-NN components {0,2}, {1,3}
    return a, g1, g2


def test_wcl_hand_value():
    a, g1, g2 = _wcl_hand_inputs()
    # NT-Xent (tau = 1) of a1 = a2 = [e1, e2, -e1, -e2]: every anchor sees its positive at 1,
    # four candidates at 0 and two at -1
    instance = math.log(E + 4 + 2 / E) - 1
    # SupCon on g1 with g2's labels: every anchor's positive is at -1, the others at 0.8 and -0.8
    sc1 = 1 + math.log(E ** 0.8 + E ** -0.8 + E ** -1)
    # SupCon on g2 with g1's labels: anchors 0, 1 positive at 0 (others 0.8, 0); anchors 2, 3
    # positive at 0.36 (others 0.8, 0)
    sc2 = 0.5 * math.log(2 + E ** 0.8) + 0.5 * (math.log(E ** 0.8 + 1 + E ** 0.36) - 0.36)
    got = wcl_loss(a, a.clone(), g1, g2, temperature=1.0)
    assert got.item() == pytest.approx(instance + 0.5 * (sc1 + sc2), abs=1e-12)
    half = wcl_loss(a, a.clone(), g1, g2, temperature=1.0, graph_weight=0.5)
    assert half.item() == pytest.approx(instance + 0.25 * (sc1 + sc2), abs=1e-12)


def test_wcl_graph_weight_zero_equals_ntxent():
    g = torch.Generator().manual_seed(2)
    a1, a2, g1, g2 = (torch.randn(8, 5, generator=g) for _ in range(4))
    for tau in (0.1, 0.5):
        assert torch.equal(wcl_loss(a1, a2, g1, g2, tau, graph_weight=0.0), ntxent_loss(a1, a2, tau))


def test_wcl_labels_are_swapped():
    g = torch.Generator().manual_seed(3)
    a1, a2 = (torch.randn(10, 4, generator=g, dtype=torch.float64) for _ in range(2))
    g1, g2 = (torch.randn(10, 3, generator=g, dtype=torch.float64) for _ in range(2))
    swapped = ref_wcl(a1, a2, g1, g2, 0.1, 1.0, True, swap=True).item()
    unswapped = ref_wcl(a1, a2, g1, g2, 0.1, 1.0, True, swap=False).item()
    got = wcl_loss(a1, a2, g1, g2, 0.1).item()
    assert got == pytest.approx(swapped, abs=1e-10)
    assert abs(got - unswapped) > 1e-3


@pytest.mark.parametrize("detach", [True, False])
def test_wcl_value_and_gradient_match_loop_reference(detach):
    g = torch.Generator().manual_seed(4)
    g1 = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    g2 = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a1, a2 = (torch.randn(7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    got = wcl_loss(a1, a2, g1, g2, 0.2, 1.0, detach)
    ref = ref_wcl(a1, a2, g1, g2, 0.2, 1.0, detach)
    assert got.item() == pytest.approx(ref.item(), abs=1e-10)
    gg = torch.autograd.grad(got, [g1, g2])
    gr = torch.autograd.grad(ref, [g1, g2])
    for x, y in zip(gg, gr):
        assert torch.allclose(x, y, atol=1e-10)


def test_wcl_detach_candidates_changes_gradient_not_value():
    g = torch.Generator().manual_seed(5)
    a1, a2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    g1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    g2 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    l_det = wcl_loss(a1, a2, g1, g2, detach_candidates=True)
    l_full = wcl_loss(a1, a2, g1, g2, detach_candidates=False)
    assert l_det.item() == pytest.approx(l_full.item(), abs=1e-12)
    (gd,) = torch.autograd.grad(l_det, [g1])
    (gf,) = torch.autograd.grad(l_full, [g1])
    assert not torch.allclose(gd, gf)


def test_wcl_errors():
    a, g = torch.randn(4, 3), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"wcl_loss: a1 must have at least 2 row"):
        wcl_loss(a[:1], a[:1], g[:1], g[:1])
    with pytest.raises(ValueError, match=r"wcl_loss: g1 must have 4 rows"):
        wcl_loss(a, a, g[:3], g[:3])
    with pytest.raises(ValueError, match=r"wcl_loss: g2 must have the same shape as g1"):
        wcl_loss(a, a, g, torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"wcl_loss: graph_weight must be a finite number >= 0, got -1.0"):
        wcl_loss(a, a, g, g, graph_weight=-1.0)
    with pytest.raises(ValueError, match=r"wcl_loss: temperature must be a finite number > 0"):
        wcl_loss(a, a, g, g, temperature=0.0)
    with pytest.raises(ValueError, match=r"wcl_loss: detach_candidates must be True or False"):
        wcl_loss(a, a, g, g, detach_candidates="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_wcl_loss_on_cuda_never_synchronises():
    # the graph step must not stall the GPU: no .item(), no data-dependent shapes, no loops on values
    g = torch.Generator(device="cuda").manual_seed(0)
    a1, a2, g1, g2 = (torch.randn(256, 32, device="cuda", generator=g, requires_grad=True) for _ in range(4))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = wcl_loss(a1, a2, g1, g2)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
