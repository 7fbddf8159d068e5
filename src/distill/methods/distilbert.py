"""DistilBERT — Sanh et al. 2019, *DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
lighter* (NeurIPS EMC^2 workshop).

General distillation on unlabelled text with masked-LM batches (``get_task("tokens", shift=False)``,
items from :class:`distill.zoo.bert.MaskedTexts`), a student initialised from the teacher's embeddings
and one of every two layers (:func:`distill.zoo.bert.copy_teacher_layers`), and the triple loss

``L = a_ce * T^2 * KL(p_T || p_S) + a_mlm * CE(MLM labels) + a_cos * (1 - cos(h_S, h_T))``

with the soft targets over the vocabulary at the masked positions, the cosine over the last hidden
states of the real tokens. The paper's weights: 5, 2, 1 at T = 2. Task distillation afterwards is plain
KD (``kd`` method) on the task's labels.
"""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("distilbert", inputs="tokens")
def distilbert(alpha_ce: float = 5.0, alpha_mlm: float = 2.0, alpha_cos: float = 1.0,
               temperature: float = 2.0) -> list[Term]:
    """DistilBERT's general-distillation triple loss (Sanh et al. 2019): soft targets over the vocabulary at the
    masked positions, the masked-LM loss and the cosine of last hidden states, weighted 5 / 2 / 1 at T = 2."""
    return [Term("kd", alpha_ce, temperature=temperature), Term("ce", alpha_mlm),
            Term("cosine_hidden", alpha_cos, name="cos")]
