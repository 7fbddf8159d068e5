"""TinyBERT — Jiao et al. 2020, *TinyBERT: Distilling BERT for Natural Language Understanding* (Findings
of EMNLP).

Student layer ``m`` learns from teacher layer ``g(m) = m * T / S`` (``uniform`` map):

* embeddings: ``MSE(E^S W_e, E^T)`` (``embedding_mse``, ``hidden[0]``);
* attention: ``1/h * sum_heads MSE(A^S_m, A^T_g(m))`` on the pre-softmax scores (``attention_mse``);
* hidden states: ``MSE(H^S_m W_h, H^T_g(m))`` (``hidden_mse``), ``W`` learned when widths differ;
* prediction: ``-sum softmax(z^T / t) * log_softmax(z^S / t)``, the soft cross-entropy, which is
  ``kd / t^2`` plus the teacher's entropy (a constant): ``Term("kd", 1 / t^2, temperature=t)``.

Task-specific distillation runs in two stages, as the paper does: the intermediate layers first
(embeddings, attention, hidden states), then the prediction layer alone. General distillation (on
unlabelled text, before the task) uses the intermediate stage only: ``tinybert(..., stage="intermediate")``.
"""
from distill.methods.registry import register_method
from distill.stages import Stage
from distill.terms import Term
from distill.transformer import layer_terms


def intermediate_terms(student_layers: int, teacher_layers: int, strategy="uniform") -> list[Term]:
    """TinyBERT's embedding, attention and hidden-state terms for a ``strategy`` map."""
    return ([Term("embedding_mse", 1.0)]
            + layer_terms("attention_mse", student_layers, teacher_layers, strategy)
            + layer_terms("hidden_mse", student_layers, teacher_layers, strategy))


@register_method("tinybert", inputs="tokens")
def tinybert(student_layers: int, teacher_layers: int, stage: str = "both", intermediate_epochs: float = 0.5,
             temperature: float = 1.0, strategy="uniform") -> list[Stage]:
    """TinyBERT (Jiao et al. 2020): embedding, attention-score and hidden-state MSE on a ``strategy`` layer
    map, then the soft cross-entropy of the prediction layer at ``temperature``; ``stage``: ``"both"``
    (``intermediate_epochs`` of the run on the first), ``"intermediate"`` or ``"prediction"``."""
    first = Stage(intermediate_terms(student_layers, teacher_layers, strategy), name="intermediate layers")
    second = Stage([Term("kd", 1.0 / temperature**2, temperature=temperature)], name="prediction layer")
    if stage == "intermediate":
        return [first]
    if stage == "prediction":
        return [second]
    if stage != "both":
        raise ValueError(f"tinybert stage must be 'both', 'intermediate' or 'prediction', got {stage!r}")
    first.epochs = intermediate_epochs
    return [first, second]
