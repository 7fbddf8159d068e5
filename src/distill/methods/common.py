"""What most methods share: the labels' cross-entropy beside the method's own terms, and optional KD."""
from distill.terms import Term


def with_labels(terms: list[Term], alpha: float = 0.0, temperature: float = 4.0) -> list[Term]:
    """``(1 - alpha) * CE + terms (+ alpha * KD at ``temperature``)``: a feature method alone or combined with KD."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = ([Term("ce", 1.0 - alpha)] if alpha < 1.0 else []) + list(terms)
    if alpha > 0:
        out.append(Term("kd", alpha, temperature=temperature))
    return out


def per_layer(loss: str, weight: float, layers, teacher_layers=None, **params) -> list[Term]:
    """One term of ``loss`` per student layer, matched to the teacher layer of the same position."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    teacher_layers = layers if teacher_layers is None else (
        [teacher_layers] if isinstance(teacher_layers, str) else list(teacher_layers))
    if len(layers) != len(teacher_layers):
        raise ValueError(f"{len(layers)} student layers but {len(teacher_layers)} teacher layers")
    return [Term(loss, weight, student=s, teacher=t, name=f"{loss}_{s}" if len(layers) > 1 else loss, **params)
            for s, t in zip(layers, teacher_layers)]
