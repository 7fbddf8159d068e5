"""Loss terms: pure functions of tensors.

Every function here takes tensors and returns a scalar tensor. None of them
knows about models, taps, engines or recipes; :class:`distill.terms.Term`
binds a function to tap names and a weight. Each loss registers its name and default
binding where it is defined (:func:`distill.losses.registry.register_loss`, filling
:data:`distill.losses.registry.LOSSES`).

Per-position logit losses (``kd_loss``, ``dkd_loss``, ``dist_loss``, ``cross_entropy``,
``generalized_jsd_loss``) take ``(batch, ..., classes)`` logits with the class axis last and
the keywords ``mask`` (bool, or integer labels with ``ignore_index=-100``) and ``num_items``
(the divisor; see :mod:`distill.losses.positions`). The CTC losses (:mod:`distill.losses.ctc`) take
``(batch, frames, vocabulary)`` logits, blank = 0, and a frame ``mask``.
"""
from distill.losses.ab import ab_loss
from distill.losses.attention import at_loss, nst_loss
from distill.losses.cam import cam_match_loss, gradcam_pp
from distill.losses.ctc import ctc_frame_kd, ctc_loss, ctc_sequence_kd
from distill.losses.crd import CRD, LazyCRD, crd_loss, crd_nce_loss
from distill.losses.datafree import bn_statistics_loss, dafl_generator_loss, js_divergence, logit_l1, total_variation
from distill.losses.detection import (FGD, GID, detection_loss, heatmap_kd, localization_kd, masked_imitation,
                                      pearson_kd)
from distill.losses.dist import dist_loss
from distill.losses.dkd import dkd_loss
from distill.losses.fsp import fsp_loss, fsp_matrix
from distill.losses.ft import FactorTransferLoss, Paraphraser, ParaphraserLoss, Translator, ft_loss
from distill.losses.gkd import generalized_jsd_loss
from distill.losses.hint import hint_loss
from distill.losses.kd import cross_entropy, kd_loss
from distill.losses.minillm import minillm_loss
from distill.losses.multilingual import multilingual_mse
from distill.losses.multi_teacher import multi_teacher_kd_loss, teacher_mixture_weights, teacher_weights
from distill.losses.online import dml_loss, kdcl_loss, one_loss
from distill.losses.registry import LOSSES, STAGES, register_loss
from distill.losses.relational import cc_loss, pkt_loss, rkd_loss, sp_loss
from distill.losses.restoration import contrastive_loss, csd_loss, haar_dwt, l1_loss, wavelet_kd_loss
from distill.losses.tf_kd import tf_kd_loss
from distill.losses.topk import dense_from_topk, topk_logits, truncate_teacher
from distill.losses.transformer import (RailKD, attention_mse, cilda_loss, cosine_hidden, hidden_mse, pkd_loss,
                                        random_layer_map)
from distill.losses.vid import VID, vid_loss

__all__ = [
    "CRD", "FGD", "GID", "LOSSES", "STAGES", "detection_loss", "heatmap_kd", "localization_kd", "masked_imitation",
    "pearson_kd", "FactorTransferLoss", "LazyCRD", "Paraphraser", "ParaphraserLoss", "RailKD", "Translator",
    "VID", "ab_loss", "attention_mse", "cilda_loss", "cosine_hidden", "hidden_mse", "pkd_loss", "random_layer_map", "at_loss", "bn_statistics_loss", "cam_match_loss", "cc_loss", "crd_loss", "crd_nce_loss",
    "cross_entropy", "ctc_frame_kd", "ctc_loss", "ctc_sequence_kd", "dafl_generator_loss", "dist_loss", "dkd_loss",
    "dml_loss", "fsp_loss", "fsp_matrix", "ft_loss", "generalized_jsd_loss", "gradcam_pp", "hint_loss", "js_divergence",
    "kd_loss", "kdcl_loss", "logit_l1", "minillm_loss",
    "multi_teacher_kd_loss", "multilingual_mse", "nst_loss", "one_loss", "pkt_loss", "register_loss", "rkd_loss", "sp_loss",
    "teacher_mixture_weights", "teacher_weights", "tf_kd_loss", "contrastive_loss", "csd_loss", "haar_dwt", "l1_loss",
    "wavelet_kd_loss", "dense_from_topk", "topk_logits", "truncate_teacher", "total_variation", "vid_loss",
]
