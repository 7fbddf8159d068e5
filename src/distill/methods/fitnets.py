"""FitNets, one-stage form (Romero et al. 2015): labels + a hint on an intermediate layer.

Loss = CE(student, labels) + beta * MSE(connector(student[guided]), teacher[hint]) (+ optional KD).
The paper's two-stage schedule arrives with the vision method zoo.
"""
from distill.terms import Term


def fitnets(student_layer: str, teacher_layer: str, beta: float = 1.0, connector: str = "auto",
            alpha: float = 0.0, temperature: float = 4.0) -> list[Term]:
    """Hint on ``student_layer`` -> ``teacher_layer`` weighted ``beta``; optionally KD weighted ``alpha``."""
    terms = [Term("ce", 1.0 - alpha),
             Term("hint", beta, student=student_layer, teacher=teacher_layer, connector=connector)]
    if alpha > 0:
        terms.append(Term("kd", alpha, temperature=temperature))
    return terms
