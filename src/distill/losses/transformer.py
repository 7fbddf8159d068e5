"""Transformer distillation losses: TinyBERT, DistilBERT, Patient KD, RAIL-KD, CILDA.

Inputs are the transformer taps of :mod:`distill.transformer` (``hidden[i]``, ``attention_scores[i]``,
``cls[i]``, ``mean[i]``). Token-level losses take ``attention_mask`` — ``(N, L)``, 1 for a real token,
0 for padding — which a :class:`~distill.terms.Term` passes from the batch's model inputs
(``batch["input"]["attention_mask"]``) to any loss whose signature has that keyword; padded positions
never count, and the reduction is a mean over the real tokens of this call. Batch-relational losses
(``cilda``) take pooled ``(N, D)`` vectors, so they can be gathered across processes.

TinyBERT's prediction-layer loss, ``-sum softmax(z_T / T) log softmax(z_S / T)``, is ``kd`` divided by
``T**2`` plus the teacher's entropy (a constant for the student): use ``Term("kd", weight=1 / T**2,
temperature=T)`` (:func:`distill.losses.kd.kd_loss`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.registry import register_loss


def _same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{name} needs {what} of one shape, got student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)}")


def _token_mask(attention_mask: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """``attention_mask`` as a float ``(N, L)`` tensor on ``like``'s device (``None``: every token counts)."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != tuple(like.shape[:2]):
        raise ValueError(f"{name}: attention_mask of shape {tuple(attention_mask.shape)} does not match the "
                         f"(batch, tokens) {tuple(like.shape[:2])} of its inputs {tuple(like.shape)}")
    return attention_mask.to(like.device).bool().float()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``(N, L)`` per-token values over the tokens ``mask`` keeps."""
    if mask is None:
        return per_token.mean()
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


@register_loss("attention_mse", student="attention_scores[-1]", teacher="attention_scores[-1]")
def attention_mse(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""TinyBERT's attention loss — Jiao et al. 2019, *TinyBERT: Distilling BERT for Natural Language
    Understanding*, eq. (7).

    .. math::
        \mathcal{L}_{attn} = \frac{1}{h} \sum_{i=1}^{h} \mathrm{MSE}(A^S_i, A^T_i), \qquad
        A = \frac{Q K^\top}{\sqrt{d_k}}

    over the pairs (query, key) of real tokens only: the squared differences are summed over the
    samples, heads and real pairs and divided by their number (every head has the same pairs, so this
    is the mean over heads of each head's MSE). TinyBERT's code reads scores with the mask already added
    and zeroes those ``<= -1e2``, then averages over all ``L x L`` pairs, padding included; ours takes
    the scores before the mask (``attention_scores[i]``) and an explicit mask, so padding changes nothing.
    Probabilities (``attention[i]``) work too.

    Args:
        student_attention: ``(N, heads, L, L)`` the student's attention scores of one layer.
        teacher_attention: the same shape (the same number of heads) from the mapped teacher layer.
        attention_mask: ``(N, L)``, nonzero for real tokens; ``None``: every pair counts.
    """
    _same_shape("attention_mse", student_attention, teacher_attention, "attention maps (same number of heads)")
    if student_attention.dim() != 4:
        raise ValueError(f"attention_mse takes (N, heads, L, L) maps, got {tuple(student_attention.shape)}")
    squared = (student_attention.float() - teacher_attention.float()).pow(2)
    mask = _token_mask(attention_mask, student_attention[:, 0, :, 0], "attention_mse")
    if mask is None:
        return squared.mean()
    pairs = mask[:, None, :, None] * mask[:, None, None, :]  # (N, 1, Lq, Lk): query and key both real
    return (squared * pairs).sum() / (pairs.sum() * squared.shape[1]).clamp_min(1)


@register_loss("embedding_mse", student="hidden[0]", teacher="hidden[0]", connector="auto")
@register_loss("hidden_mse", student="hidden[-1]", teacher="hidden[-1]", connector="auto")
def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""TinyBERT's hidden-state and embedding losses — Jiao et al. 2019, eqs. (8) and (9).

    .. math::
        \mathcal{L}_{hidn} = \mathrm{MSE}(H^S W_h, H^T), \qquad \mathcal{L}_{embd} = \mathrm{MSE}(E^S W_e, E^T)

    the mean of the squared differences over the real tokens and the hidden units. :math:`W_h` is the
    term's connector (a learned ``Linear`` when the widths differ, built on the first batch), applied
    before this function. ``hidden_mse`` defaults to the last layers (``hidden[-1]``), ``embedding_mse``
    (the same function) to the embedding outputs (``hidden[0]``).

    Args:
        student_hidden: ``(N, L, D)`` the student's hidden states, already projected to the teacher's width
            (``(N, D)`` pooled vectors work too, without a mask).
        teacher_hidden: the same shape.
        attention_mask: ``(N, L)``, nonzero for real tokens; ``None``: every token counts.
    """
    _same_shape("hidden_mse", student_hidden, teacher_hidden, "hidden states (a connector maps the width)")
    squared = (student_hidden.float() - teacher_hidden.float()).pow(2)
    if student_hidden.dim() != 3:
        return squared.mean()
    per_token = squared.mean(-1)
    return _token_mean(per_token, _token_mask(attention_mask, per_token, "hidden_mse"))


@register_loss("cosine_hidden", student="hidden[-1]", teacher="hidden[-1]", connector="auto")
def cosine_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""DistilBERT's cosine loss — Sanh et al. 2019, *DistilBERT, a distilled version of BERT*, §2.

    .. math:: \mathcal{L}_{cos} = \frac{1}{|\text{real}|}\sum_{(n, l) \in \text{real}}
        \Big(1 - \frac{h^S_{nl} \cdot h^T_{nl}}{\|h^S_{nl}\|\,\|h^T_{nl}\|}\Big)

    :class:`torch.nn.CosineEmbeddingLoss` with target 1 over the real tokens' last hidden states, which
    aligns the directions of the two models' hidden states.

    Args:
        student_hidden: ``(N, L, D)`` (or pooled ``(N, D)``) student hidden states, the teacher's width.
        teacher_hidden: the same shape.
        attention_mask: ``(N, L)``, nonzero for real tokens; ``None``: every token counts.
    """
    _same_shape("cosine_hidden", student_hidden, teacher_hidden, "hidden states (a connector maps the width)")
    per_token = 1 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    if per_token.dim() != 2:
        return per_token.mean()
    return _token_mean(per_token, _token_mask(attention_mask, per_token, "cosine_hidden"))


@register_loss("pkd", student="cls[-1]", teacher="cls[-1]", connector="auto")
def pkd_loss(student_cls, teacher_cls) -> torch.Tensor:
    r"""Patient KD's intermediate loss — Sun et al. 2019, *Patient Knowledge Distillation for BERT Model
    Compression*, eq. (3).

    .. math:: \mathcal{L}_{PT} = \frac{1}{N}\sum_{n=1}^{N}\sum_{j}
        \Big\| \frac{h^S_{n,j}}{\|h^S_{n,j}\|_2} - \frac{h^T_{n,I(j)}}{\|h^T_{n,I(j)}\|_2} \Big\|_2^2

    the squared distance between the normalised [CLS] states (``cls[i]``) of each mapped pair of layers
    ``(j, I(j))``, summed over the pairs and averaged over the batch (the paper sums over samples too).
    One tensor per side is one pair (:func:`distill.transformer.layer_terms` makes one term per pair,
    and terms add up); lists of tensors are summed over.

    Args:
        student_cls: ``(N, D)``, or a list of them (one per layer).
        teacher_cls: the same: ``(N, D)`` or a list of as many, same widths.
    """
    pairs = list(zip(student_cls, teacher_cls)) if isinstance(student_cls, (list, tuple)) else \
        [(student_cls, teacher_cls)]
    if isinstance(student_cls, (list, tuple)) and len(student_cls) != len(teacher_cls):
        raise ValueError(f"pkd needs as many student as teacher layers, got {len(student_cls)} and {len(teacher_cls)}")
    total = 0.0
    for s, t in pairs:
        _same_shape("pkd", s, t, "[CLS] vectors")
        diff = F.normalize(s.float(), dim=-1) - F.normalize(t.float(), dim=-1)
        total = total + diff.pow(2).sum(-1).mean()
    return total


@register_loss("cilda", student="mean[-1]", teacher="mean[-1]", connector="auto", gather=True)
def cilda_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
               temperature: float = 0.1) -> torch.Tensor:
    r"""Contrastive intermediate-layer distillation, the loss CILDA (Haidar et al. 2022, *CILDA:
    Contrastive Data Augmentation using Intermediate Layer Knowledge Distillation*) adds to intermediate
    layer matching; the InfoNCE form follows CoDIR (Sun et al. 2020).

    .. math:: \mathcal{L} = -\frac{1}{N}\sum_{i=1}^{N} \log
        \frac{\exp(\langle z^S_i, z^T_i\rangle / \tau)}{\sum_{j=1}^{N} \exp(\langle z^S_i, z^T_j\rangle / \tau)},
        \qquad z = h / \|h\|_2

    What is implemented: the student's pooled representation of sample ``i`` (``mean[i]`` or ``cls[i]``,
    projected by the term's connector when the widths differ) should be closer (in cosine) to the
    teacher's representation of sample ``i`` than to the teacher's of the other samples of the batch,
    the negatives; a cross-entropy over the ``N x N`` similarity matrix, mean over the batch. Under
    several processes the batch is gathered first (``gather=True``), so the negatives are the whole
    batch. The paper's own text was not available to check its exact pooling, projection and
    temperature; ``temperature=0.1`` is our default, not the paper's.

    Args:
        student_features: ``(N, D)`` pooled student vectors, the teacher's width.
        teacher_features: ``(N, D)`` pooled teacher vectors of the same samples.
        temperature: ``tau > 0``.
    """
    _same_shape("cilda", student_features, teacher_features, "pooled (N, D) vectors")
    if student_features.dim() != 2:
        raise ValueError(f"cilda takes pooled (N, D) vectors (taps mean[i] or cls[i]), got "
                         f"{tuple(student_features.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    zs = F.normalize(student_features.float(), dim=-1)
    zt = F.normalize(teacher_features.float(), dim=-1)
    logits = zs @ zt.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def random_layer_map(student_layers: int, teacher_layers: int,
                     generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """RAIL-KD's map (Haidar et al. 2022): ``S`` teacher layers drawn at random without replacement and
    sorted, paired in order with the student's layers ``1..S``: ``[(1, n_1), ..., (S, n_S)]``, ``n_1 < ...``."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"random_layer_map: needs 1 <= student layers ({student_layers}) <= teacher layers "
                         f"({teacher_layers})")
    chosen = torch.randperm(teacher_layers, generator=generator)[:student_layers].sort().values
    return [(m, int(n) + 1) for m, n in enumerate(chosen, 1)]


@register_loss("rail_kd")
class RailKD(nn.Module):
    r"""RAIL-KD — Haidar et al. 2022, *RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge
    Distillation*: each epoch, ``S`` of the teacher's ``T`` layers are drawn at random (sorted,
    :func:`random_layer_map`) and matched with the student's ``S`` layers.

    ``mode="layer"`` (RAIL-KD\ :sub:`l`): :math:`\sum_k \| \hat{W_k s_k} - \hat{t}_{n_k} \|^2`,
    ``mode="concat"`` (RAIL-KD\ :sub:`c`):
    :math:`\| \widehat{W [s_1; ..; s_S]} - \widehat{[t_{n_1}; ..; t_{n_S}]} \|^2`,
    averaged over the batch, where :math:`s_k, t_n` are pooled layer representations (``mean[i]`` taps:
    the mean over real tokens), :math:`W` learned linear maps (built on the first batch, trained with the
    student) and :math:`\hat{x} = x / \|x\|_2`. (Our reading of the paper; its text was not at hand.)

    Why a loss over *all* the teacher's layers: a term's taps are fixed when a run starts, so the loss
    receives every teacher layer (hooks cost nothing; the layers run anyway) and draws its map from
    ``epoch`` — which :class:`~distill.terms.Term` passes from the training loop — and ``seed``. The map
    is then the same on every process and after a resume. Build the term with
    :func:`distill.transformer.rail_kd_term`.

    Args (of ``forward``):
        student_features: a list of ``S`` pooled ``(N, D_s)`` student layers.
        teacher_features: a list of ``T >= S`` pooled ``(N, D_t)`` teacher layers.
        epoch: the 0-based training epoch (the map is redrawn when it changes).
    """

    def __init__(self, mode: str = "layer", seed: int = 0):
        super().__init__()
        if mode not in ("layer", "concat"):
            raise ValueError(f"rail_kd mode must be 'layer' or 'concat', got {mode!r}")
        self.mode, self.seed = mode, int(seed)
        self.projections: nn.ModuleList | None = None

    def layers(self, student_layers: int, teacher_layers: int, epoch: int) -> list[tuple[int, int]]:
        """The map used in ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        return random_layer_map(student_layers, teacher_layers, generator)

    def forward(self, student_features, teacher_features, epoch: int = 0) -> torch.Tensor:
        if not isinstance(student_features, (list, tuple)) or not isinstance(teacher_features, (list, tuple)):
            raise ValueError("rail_kd takes lists of pooled layers (student=['mean[1]', ...], teacher=[...]): "
                             "build its term with distill.transformer.rail_kd_term(S, T)")
        if any(x.dim() != 2 for x in [*student_features, *teacher_features]):
            raise ValueError("rail_kd takes pooled (N, D) layers: taps mean[i] or cls[i]")
        s_count, t_count = len(student_features), len(teacher_features)
        chosen = [teacher_features[n - 1] for _, n in self.layers(s_count, t_count, epoch)]
        if self.projections is None:  # built on the first batch (the engine's set-up batch)
            d_s, d_t = student_features[0].shape[-1], chosen[0].shape[-1]
            shapes = [(d_s, d_t)] * s_count if self.mode == "layer" else [(s_count * d_s, s_count * d_t)]
            self.projections = nn.ModuleList(nn.Linear(a, b) for a, b in shapes).to(student_features[0].device)
        if self.mode == "concat":
            student_features, chosen = [torch.cat(list(student_features), -1)], [torch.cat(chosen, -1)]
        total = 0.0
        for projection, s, t in zip(self.projections, student_features, chosen):
            diff = F.normalize(projection(s.float()), dim=-1) - F.normalize(t.float(), dim=-1)
            total = total + diff.pow(2).sum(-1).mean()
        return total
