"""The label-oracle control (issue #13): ``plugins: [mask_false_negatives]``.

**It trains on class labels** -- a control, not a self-supervised method. On any host with an
InfoNCE-type loss (SimCLR, MoCo v2, NNCLR, pNNCLR, WCL's instance term) the candidates of the
anchor's class that are not its positive -- the false negatives -- are removed from the softmax
denominator (``mode: remove``, default) or made positives (``mode: positive``); see
``relssl.losses.oracle``. Everything else of the host (views, heads, queues, EMA, WCL's graph
term) is unchanged, so the gap between a method and its oracle run is what false negatives cost
it, and the gap a false-negative method closes is the share of that cost it recovers.

Hosts (the methods with the ``fn_oracle`` capability) read ``host.fn_oracle`` (None, or the mode)
through ``relssl.methods.base.oracle_labels``; the engine refuses a dataset without labels and
writes ``uses_labels: true`` into the run's results. It does not combine with ASCL (which
replaces MoCo's loss with its own soft targets) nor change BSIM's mixture term.
"""

from __future__ import annotations

from dataclasses import dataclass


from relssl.losses.oracle import ORACLE_MODES
from relssl.methods.base import FN_ORACLE, Plugin, register_plugin
from relssl.methods.common import check_choice


@register_plugin
class FalseNegativeOracle(Plugin):
    name = "mask_false_negatives"
    requires = (frozenset({FN_ORACLE}),)
    uses_labels = True

    @dataclass
    class Config:
        mode: str = "remove"  # remove: out of the denominator | positive: extra positives

        def validate(self) -> None:
            check_choice("mode", self.mode, ORACLE_MODES, prefix="plugins.mask_false_negatives")

    def attach(self, host) -> None:
        host.fn_oracle = self.cfg.mode

