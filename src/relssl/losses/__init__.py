"""Pure loss functions of relssl (the public table in ``methods/README.md``).

Contract: every loss is a pure function of tensors (no modules, no state, no distributed
calls), L2-normalises its inputs over rows, treats queues / banks / teacher outputs / targets
as constants (detached: no gradient flows into them), computes in float32 at least (bf16 /
fp16 inputs are upcast and autocast is disabled inside, so the value is right under
``torch.autocast``) and returns a scalar (the batch mean unless ``reduction`` says otherwise).
Queues and banks are ``(K, D)``, one entry per row. Bad arguments raise
:class:`LossArgumentError`, a ``ValueError`` with a one-line message.

=====================  ================================================================
module                 functions
=====================  ================================================================
``contrastive``        ntxent_loss, moco_loss, supcon_loss, nnclr_loss
``regression``         byol_regression, byol_loss, msf_loss
``relational``         msvq_loss, relation_ce, relation_targets (ReSSL), ascl_targets,
                       ascl_loss, ascl_byol_loss
``graph``              connected_components, wcl_loss
``neighbours``         pseudo_nn, pnnclr_loss
``mixture``            bsim_infonce_loss, bsim_byol_loss
``oracle``             oracle_ntxent_loss, oracle_moco_loss, oracle_nnclr_loss,
                       oracle_pnnclr_loss, masked_infonce (label-oracle controls: they
                       train on class labels; not self-supervised)
=====================  ================================================================
"""

from relssl.losses._common import LossArgumentError
from relssl.losses.contrastive import moco_loss, nnclr_loss, ntxent_loss, supcon_loss
from relssl.losses.graph import connected_components, wcl_loss
from relssl.losses.mixture import bsim_byol_loss, bsim_infonce_loss
from relssl.losses.neighbours import pnnclr_loss, pseudo_nn
from relssl.losses.oracle import (
    masked_infonce,
    oracle_moco_loss,
    oracle_nnclr_loss,
    oracle_ntxent_loss,
    oracle_pnnclr_loss,
)
from relssl.losses.regression import byol_loss, byol_regression, msf_loss
from relssl.losses.relational import ascl_byol_loss, ascl_loss, ascl_targets, msvq_loss, relation_ce, relation_targets

__all__ = [
    "LossArgumentError",
    "ntxent_loss",
    "moco_loss",
    "byol_loss",
    "byol_regression",
    "supcon_loss",
    "nnclr_loss",
    "msf_loss",
    "msvq_loss",
    "relation_ce",
    "relation_targets",
    "ascl_targets",
    "ascl_loss",
    "ascl_byol_loss",
    "wcl_loss",
    "connected_components",
    "pseudo_nn",
    "pnnclr_loss",
    "bsim_infonce_loss",
    "bsim_byol_loss",
    "masked_infonce",
    "oracle_ntxent_loss",
    "oracle_moco_loss",
    "oracle_nnclr_loss",
    "oracle_pnnclr_loss",
]
