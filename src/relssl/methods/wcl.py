"""WCL: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021, arXiv 2110.04770).

Spec: docs/methods/wcl.md (official ``mingkai-zheng/WCL``,
``network/wcl.py`` and ``wcl.py``); its two terms are NT-Xent and a within-view
SupCon L_out on weak labels.

Step: ``h = f(cat[x1, x2])`` (one backbone forward, so both views share BN statistics),
``a_v = g(h_v)`` (instance head), ``b_v = phi(h_v)`` (graph head), then
``loss = relssl.losses.wcl_loss(a1, a2, b1, b2, temperature, graph_weight, detach_candidates)``:
NT-Xent on the instance head + ``graph_weight`` x SupCon on the graph head, where the weak labels
of each view are the connected components of the 1-NN graph of that view's graph-head embeddings
over the batch, swapped across views (view 2's components supervise view 1 and vice versa).
The components come from ``relssl.losses.graph.nn_graph_labels``: a fixed number of
pointer-doubling rounds on the device (about log2 of the batch), with no host synchronisation,
so the graph step never stalls a GPU (tested under ``torch.cuda.set_sync_debug_mode("error")``
where a GPU is present).

Choices (code = official repo, paper = the ICCV paper):

* Heads: two ``relssl.nn.wcl_head`` (Linear-BN-ReLU-Linear-BN-ReLU-Linear, bias on, no final BN).
  Defaults ``proj_hidden=4096``, ``proj_dim=256`` are the code's; the paper's 2048/128 are what
  the small-data recipes use. ``temperature=0.1`` for both terms, ``graph_weight=1`` (code).
* ``detach_candidates=True`` (code): the graph term differentiates only its anchor rows (the
  official candidates come from a ``no_grad`` all-gather); ``False`` is the textbook gradient.
* Global batch: the head outputs of every process are gathered *with* gradient
  (``relssl.nn.gather_with_grad``, identity for one process, where the official code crashes)
  and every process evaluates ``wcl_loss`` on the whole global batch. So the graph is built over
  the global batch (as the code does on rank 0), the loss value equals the one-process value on
  that batch, and with DDP's gradient averaging the gradient is that of one process holding the
  global batch. This reproduces the official graph-term gradient exactly; for the instance term
  it keeps the gradient through other processes' columns that the official ``no_grad`` gather
  drops (identical with one process). Differences that remain: the engine uses per-process
  (Split)BN on both views together, the code SyncBN over the global batch with one forward per
  view.
* Augmentation schedule (code): ``views_for_epoch`` returns MoCo v2 aug+ (``strong``) for the
  first ``weak_aug_epochs`` epochs (10 in the code, where it equals the 10 LR warm-up epochs),
  then SimCLR aug (``simclr``); ``weak_aug_epochs=0`` uses SimCLR aug throughout. The engine
  follows it only when the config leaves ``views`` unset.
* ``multicrop`` (paper only, UNVERIFIED; default 0 = off, which is exactly the two-view step
  above). The paper adds SwAV-style low-resolution crops (6 x 96 px with 224-px views) and keeps
  only those a KNN rule judges similar to their sample's main views as extra positives; the rule's
  exact form could not be read and its code was never released, so this is our documented
  reading, off by default so that the default reproduces the released code:

  - Views: the engine appends ``multicrop`` crops (``WCL.extra_views``, read by
    ``engine.module.view_recipes``) of the main views' preset of the epoch (MoCo v2 aug+ in the
    weak epochs, then SimCLR aug) at ``multicrop_size`` px (default ``max(8, round(crop / 2))``:
    16 px for 32-px images; the paper's 96 px at 224 is ``multicrop_size=96``) and crop area
    ``multicrop_scale`` (default SwAV's (0.05, 0.14) when the main crops are 96 px or more; below,
    (0.14, 0.5), our choice: a 5% crop of a 32-px image is a ~7-px patch of a centred object, so
    the range starts where SwAV's ends and stops at half the image).
  - Embedding: the small crops (all of one size) take one pass of their own through the backbone
    and the graph head (their own BN statistics; SwAV instead runs its head over all crops at
    once), so the two-view part of the loss sees exactly the embeddings it sees without them and
    ``multicrop_weight=0`` is the two-view loss. They are gathered on the same rows as their
    sample's main views. The instance head is not run on them (the term does not use it).
  - Rule (no gradient): a small crop of sample i is accepted when its graph-head embedding's
    most cosine-similar row among the 2N main-view graph-head embeddings of the global batch
    (views 1 and 2) is one of i's own views (``multicrop_rule="self"``), or lies in i's weak-label
    component of that view (``"component"``, which accepts every crop "self" accepts).
  - Loss: ``wcl_loss`` (unchanged) + ``multicrop_weight`` x the mean over accepted crops of a
    SupCon L_out with the crop as anchor, the 2N main-view graph embeddings as candidates
    (detached with ``detach_candidates``) and i's component members in each view as positives
    (``multicrop_term``); 0 when no crop is accepted. Logged: ``multicrop_accept`` (share of small
    crops accepted) and ``multicrop_loss`` (the unweighted term).
  - Why off by default: unverified rule, an extra forward per step, and early in training few
    crops pass the rule (the 1-NN of a random embedding is rarely its own sample).
* Monitoring (``graph_metrics``, on by default; no gradient, no host synchronisation: the graphs
  are recomputed with the fixed-round ``nn_graph_labels``), over the global batch and averaged
  over the two views: ``graph_size`` = mean connected-component size (N / #components),
  ``graph_purity`` (only when labels are known) = fraction of the ordered positive pairs
  ``i != j`` of the weak-label mask whose true classes agree; ``instance_loss`` = the NT-Xent
  term and ``graph_loss`` = the unweighted graph term (only when ``graph_weight > 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from relssl.errors import ConfigError
from relssl.losses import connected_components, ntxent_loss, oracle_ntxent_loss, wcl_loss
from relssl.losses.graph import MULTICROP_RULES, multicrop_term, one_nn_index
from relssl.metrics.falseneg import graph_stats
from relssl.methods.base import FN_ORACLE, TEMPERATURE, Method, StepInfo, oracle_labels, register_method
from relssl.methods.common import check_choice, check_positive
from relssl.methods.diagnose import batch_diagnostics, graph_diagnostics
from relssl.nn import gather_no_grad, gather_with_grad, rank, wcl_head

WEAK_VIEWS = ("strong", "strong")  # the code's ``moco_aug`` for the first epochs
SWAV_SMALL_SCALE = (0.05, 0.14)  # SwAV's small-crop area range (96-px crops of 224-px images)
SMALL_IMAGE_SCALE = (0.14, 0.5)  # our choice below 96 px: see the module docstring


def multicrop_geometry(size: int | None, scale, crop_size: int) -> tuple[int, tuple[float, float]]:
    """Pixel size and crop-area range of the small crops for main crops of ``crop_size`` px.

    ``size=None``: ``max(8, round(crop_size / 2))`` capped at ``crop_size`` (16 px for 32-px
    images, 32 for 64, 112 for 224; the paper's 96 px at 224 is ``multicrop_size=96``).
    ``scale=None``: SwAV's (0.05, 0.14) for main crops of 96 px and more, else (0.14, 0.5).
    Raises a one-line ``ConfigError`` when ``size`` exceeds ``crop_size``.
    """
    if size is None:
        size = min(crop_size, max(8, round(crop_size / 2)))
    elif size > crop_size:
        raise ConfigError(f"method.multicrop_size ({size} px) must be <= the crop size ({crop_size} px): "
                          "the extra crops are the low-resolution ones")
    if scale is None:
        scale = SWAV_SMALL_SCALE if crop_size >= 96 else SMALL_IMAGE_SCALE
    return int(size), (float(scale[0]), float(scale[1]))


@register_method
class WCL(Method):
    name = "wcl"
    capabilities = frozenset({TEMPERATURE, FN_ORACLE})
    default_views = ("simclr", "simclr")

    @dataclass
    class Config:
        temperature: float = 0.1
        graph_weight: float = 1.0
        detach_candidates: bool = True
        proj_hidden: int = 4096
        proj_dim: int = 256
        weak_aug_epochs: int = 10
        # UNVERIFIED paper option (not in the released code), off by default: extra low-resolution
        # crops, each used as an extra positive only when its graph-head 1-NN among the main views
        # is its own sample (rule "self") or in its weak-label component (rule "component")
        multicrop: int = 0  # number of extra small crops per image (0 = off: the official two views)
        multicrop_size: int | None = None  # px; None = max(8, round(crop_size / 2)), capped at crop_size
        multicrop_scale: list[float] | None = None  # crop area range; None = (0.05, 0.14) (SwAV) for
        #   main crops >= 96 px, (0.14, 0.5) for smaller ones
        multicrop_rule: str = "self"  # self | component
        multicrop_weight: float = 1.0
        graph_metrics: bool = True

        def validate(self) -> None:
            check_positive("temperature", self.temperature)
            check_positive("proj_hidden", self.proj_hidden)
            check_positive("proj_dim", self.proj_dim)
            if self.graph_weight < 0:
                raise ConfigError(f"method.graph_weight must be >= 0, got {self.graph_weight}")
            if self.weak_aug_epochs < 0:
                raise ConfigError(f"method.weak_aug_epochs must be >= 0 (0 = SimCLR aug from the start), "
                                  f"got {self.weak_aug_epochs}")
            if self.multicrop < 0:
                raise ConfigError(f"method.multicrop must be >= 0 (0 = off, the official two views), "
                                  f"got {self.multicrop}")
            if self.multicrop_size is not None and self.multicrop_size < 1:
                raise ConfigError(f"method.multicrop_size must be >= 1 px (or null = auto), got {self.multicrop_size}")
            scale = self.multicrop_scale
            if scale is not None and not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
                raise ConfigError(f"method.multicrop_scale must be [low, high] with 0 < low <= high <= 1 "
                                  f"(or null = auto), got {list(scale)}")
            check_choice("multicrop_rule", self.multicrop_rule, MULTICROP_RULES)
            if self.multicrop_weight < 0:
                raise ConfigError(f"method.multicrop_weight must be >= 0, got {self.multicrop_weight}")

    @classmethod
    def extra_views(cls, section: dict, crop_size: int, main_names: list[str]) -> list[tuple[str, dict]]:
        """The engine's hook (``view_recipes``): ``multicrop`` small crops after the two main views,
        each the main views' first preset at ``multicrop_size`` px and ``multicrop_scale``."""
        n = section.get("multicrop", 0)
        if not n:
            return []
        size, scale = multicrop_geometry(section.get("multicrop_size"), section.get("multicrop_scale"),
                                         crop_size)
        return [(main_names[0], {"crop_size": size, "crop_scale": scale})] * n

    @classmethod
    def check_run_config(cls, cfg) -> None:
        """Small crops no larger than an explicit ``data.crop_size`` (a dataset's default crop size
        is checked when the views are built)."""
        m = cfg.method
        if m.get("multicrop", 0) and cfg.data.crop_size is not None:
            multicrop_geometry(m.get("multicrop_size"), m.get("multicrop_scale"), cfg.data.crop_size)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "WCL.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = backbone
        self.instance_head = wcl_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)  # g
        self.graph_head = wcl_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)  # phi

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def views_for_epoch(self, epoch: int) -> list[str]:
        """MoCo v2 aug+ for the first ``weak_aug_epochs`` epochs, then SimCLR aug (official code);
        the ``multicrop`` small crops (if any) follow the main views' preset."""
        main = list(WEAK_VIEWS if epoch < self.cfg.weak_aug_epochs else self.default_views)
        return main + main[:1] * self.cfg.multicrop

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if len(views) != 2 + cfg.multicrop:
            raise ValueError(f"wcl takes 2 + method.multicrop = {2 + cfg.multicrop} views, got {len(views)}")
        x1, x2, *small = views
        h = self.encoder(torch.cat([x1, x2]))  # one forward: both views share BN statistics
        a1, a2 = self.instance_head(h).chunk(2)
        g1, g2 = self.graph_head(h).chunk(2)
        # the small crops (one size) in a pass of their own through the backbone and the graph head
        # (own BN statistics): the two-view part sees exactly what it sees without them
        gs = self.graph_head(self.encoder(torch.cat(small))).chunk(len(small)) if small else []
        # the global batch, rows in rank order (identity with one process); one collective, so
        # the small crops of every sample stay on its row
        a1, a2, g1, g2, *gs = gather_with_grad(torch.stack([a1, a2, g1, g2, *gs], dim=1)).unbind(1)
        base = wcl_loss(a1, a2, g1, g2, temperature=cfg.temperature, graph_weight=cfg.graph_weight,
                        detach_candidates=cfg.detach_candidates)
        two_view = base
        oracle = oracle_labels(self, info)
        if oracle is not None:  # the label-oracle control on the instance term (mask_false_negatives)
            base = base + (oracle_ntxent_loss(a1, a2, gather_no_grad(oracle), cfg.temperature, self.fn_oracle)
                           - ntxent_loss(a1, a2, temperature=cfg.temperature))
        out = {"loss": base}
        if gs:
            term, accepted = multicrop_term(torch.stack(gs, dim=1), g1, g2, temperature=cfg.temperature,
                                            rule=cfg.multicrop_rule, detach_candidates=cfg.detach_candidates)
            out["loss"] = base + cfg.multicrop_weight * term
            out["multicrop_loss"] = term.detach()
            out["multicrop_accept"] = accepted.float().mean()
        if cfg.graph_metrics:
            with torch.no_grad():
                instance = ntxent_loss(a1.detach(), a2.detach(), temperature=cfg.temperature)
                out["instance_loss"] = instance
                if cfg.graph_weight > 0:
                    out["graph_loss"] = (two_view.detach() - instance) / cfg.graph_weight
            labels = None if info.labels is None else gather_no_grad(info.labels)
            out.update(graph_stats([g1, g2], labels))
        if info.diagnose:  # in-batch negatives of this process's rows; view 1's weak-label graph (global)
            b = x1.shape[0]
            lo = rank() * b if a1.shape[0] > b else 0
            diag = batch_diagnostics(a1[lo:lo + b], a2[lo:lo + b], info, cfg.temperature)
            labels = gather_no_grad(info.labels)
            diag.update(graph_diagnostics(connected_components(one_nn_index(F.normalize(g1.detach(), dim=1))), labels))
            out["_diag"] = diag
        return out
