"""The label-oracle control (issue #13): ``plugins: [mask_false_negatives]``.

**It trains on class labels** -- a control, not a self-supervised method. On any host with an
InfoNCE-type loss (SimCLR, MoCo v2, NNCLR, pNNCLR, WCL's instance term) the candidates of the
anchor's class that are not its positive -- the false negatives -- are removed from the softmax
denominator (``mode: remove``, default) or made positives (``mode: positive``); see
``relssl.losses.oracle``. Everything else of the host (views, heads, queues, EMA, WCL's graph
term) is unchanged, so the gap between a method and its oracle run is what false negatives cost
it, and the gap a false-negative method closes is the share of that cost it recovers.

Hosts read ``host.fn_oracle`` (None, or the mode); the engine refuses a dataset without labels and
writes ``uses_labels: true`` into the run's results. It does not combine with ASCL (which
replaces MoCo's loss with its own soft targets) nor change BSIM's mixture term.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from relssl.errors import TrainingError
from relssl.losses.oracle import ORACLE_MODES
from relssl.methods.common import check_choice


class FalseNegativeOracle(nn.Module):
    name = "mask_false_negatives"
    hosts = ("simclr", "mocov2", "nnclr", "pnnclr", "wcl")
    uses_labels = True

    @dataclass
    class Config:
        mode: str = "remove"  # remove: out of the denominator | positive: extra positives

        def validate(self) -> None:
            check_choice("mode", self.mode, ORACLE_MODES, prefix="plugins.mask_false_negatives")

    def __init__(self, cfg: "FalseNegativeOracle.Config") -> None:
        super().__init__()
        self.cfg = cfg

    def attach(self, host: nn.Module) -> None:
        host.fn_oracle = self.cfg.mode

    def after_host_step(self, host, views, info, out: dict) -> dict:
        return out


def oracle_labels(host, info):
    """The batch's labels when ``host`` runs under the oracle, else None (no oracle)."""
    if getattr(host, "fn_oracle", None) is None:
        return None
    if info.labels is None:
        raise TrainingError("plugin mask_false_negatives needs class labels for the pretraining images; "
                            "use a labelled dataset or remove the plug-in")
    return info.labels
