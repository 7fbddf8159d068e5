r"""Knowledge distillation for seq2seq models — Kim & Rush 2016, *Sequence-Level Knowledge Distillation* (EMNLP).

With source :math:`x`, target :math:`y = (y_1 \dots y_J)` and vocabulary :math:`\mathcal V`:

* **word-level KD** (``word_kd``, the paper's eq. 2 mixed with NLL as in its §3.1): per target position,
  cross-entropy to the teacher's next-token distribution on the reference prefix,

  .. math:: \mathcal L = (1 - \alpha)\,\mathcal L_{NLL}
     + \alpha \sum_j \mathrm{KL}\big(q(\cdot \mid y_{<j}, x) \,\|\, p(\cdot \mid y_{<j}, x)\big)

  (the KL differs from the paper's cross-entropy by the teacher's entropy, a constant for the student);
* **sequence-level KD** (``seq_level_kd``, eq. 4 approximated by the teacher's mode): train with NLL on
  :math:`\hat y = \arg\max_y q(y \mid x)`, found by beam search (beam 5), :math:`\mathcal L = -\log p(\hat y \mid x)`;
* **sequence-level interpolation** (``seq_inter``, §3.3): NLL on the beam hypothesis closest to the reference,
  :math:`\tilde y = \arg\max_{y \in \mathcal B} \mathrm{sim}(y, y^*)` over the beam :math:`\mathcal B` (here
  sim = minus the edit distance; the paper uses BLEU), :math:`\mathcal L = -\log p(\tilde y \mid x)`;
* **word + sequence** (``word_seq_kd``, the paper's best: Seq-KD + Word-KD): word-level KD on
  :math:`\hat y`'s prefixes.

The transfer set (:class:`distill.seq2seq.BeamTargets`) is made once per sample by the live teacher and kept;
pass a ready (e.g. loaded) one as ``transfer``. Models: ``input_ids`` / ``decoder_input_ids`` seq2seq models
(:class:`distill.zoo.seq2seq.Seq2SeqTransformer`) on task ``get_task("tokens", shift=False, pad_token_id=0)``.
"""
from distill.methods.registry import register_method
from distill.methods.token_kd import check_fraction, token_kd
from distill.seq2seq import BeamTargets
from distill.stages import Stage


@register_method("word_kd", inputs="seq2seq")
def word_kd(alpha: float = 0.5, temperature: float = 1.0):
    """Word-level KD: ``1 - alpha`` NLL on the references plus ``alpha`` per-token KL(teacher || student)."""
    return token_kd(alpha=alpha, temperature=temperature)


@register_method("seq_level_kd", inputs="seq2seq")
def seq_level_kd(beam: int = 5, max_len: int = 32, length_penalty: float = 1.0, word_kd: float = 0.0,
                 interpolate: bool = False, transfer: BeamTargets | None = None) -> list[Stage]:
    """NLL on the teacher's beam-search outputs (``interpolate``: the beam hypothesis closest to the reference),
    with ``word_kd`` of per-token KL to the teacher on those targets."""
    word_kd = check_fraction("word_kd", word_kd)
    targets = transfer or BeamTargets(beam, max_len, length_penalty, interpolate)
    return [Stage(token_kd(alpha=word_kd), augment=targets, name="seq_level_kd")]


@register_method("seq_inter", inputs="seq2seq")
def seq_inter(beam: int = 5, max_len: int = 32, length_penalty: float = 1.0, word_kd: float = 0.0,
              transfer: BeamTargets | None = None) -> list[Stage]:
    """Sequence-level interpolation: NLL on the teacher's beam hypothesis closest to the reference."""
    return seq_level_kd(beam, max_len, length_penalty, word_kd, True, transfer)


@register_method("word_seq_kd", inputs="seq2seq")
def word_seq_kd(beam: int = 5, max_len: int = 32, length_penalty: float = 1.0, alpha: float = 0.5,
                transfer: BeamTargets | None = None) -> list[Stage]:
    """Sequence-level KD plus word-level KD (weight ``alpha``) on the teacher's beam outputs."""
    return seq_level_kd(beam, max_len, length_penalty, alpha, False, transfer)
