"""The one-batch probe: the trainable student with its taps and connectors, checked on a first batch."""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from distill.connectors import build_connector
from distill.engine.config import DistillError
from distill.errors import cause, describe
from distill.taps import TapRecorder, parse_tap
from distill.tasks import check_inputs  # noqa: F401  (the engine's checks in one place)
from distill.teacher import run_model
from distill.terms import Term


class StudentWithTaps(nn.Module):
    """The trainable part of a run: the student and its connectors.

    ``forward`` returns the student's tap values, with each connector applied to
    its term's tap (under the key :attr:`Term.student_value_key`). Keeping connectors
    inside this module's forward keeps distributed gradient sync correct.

    A loss term whose function is an ``nn.Module`` (a contrastive memory bank, a
    learned projection) is registered here too, so its parameters are trained and
    its parameters and buffers are checkpointed and restored with the student.
    """

    def __init__(self, student: nn.Module, taps):
        super().__init__()
        self.student = student
        self.recorder = TapRecorder(student, taps, model_name="student")
        self.connectors = nn.ModuleDict()
        self.connector_inputs: dict[str, str] = {}
        self.term_modules = nn.ModuleDict()

    def add_connector(self, name: str, tap: str, module: nn.Module) -> None:
        self.connectors[name] = module
        self.connector_inputs[name] = tap

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        values = self.recorder.collect(run_model(self.student, inputs))
        for name, tap in self.connector_inputs.items():
            values[f"{name}<-{tap}"] = self.connectors[name](values[tap])
        return values


def modules_before(model: nn.Module, tap: str, batch) -> set[int]:
    """Ids of the parameters of the modules that run before ``tap``'s module finishes (one forward of ``batch``).

    Parameters of modules that run later cannot affect the tap's value; this is how
    "the student up to the guided layer" is found without knowing the architecture.
    """
    spec = parse_tap(tap, model)
    if spec.kind != "module":
        raise DistillError(f"train_up_to must name a module of the student, got {tap!r}")
    modules = dict(model.named_modules())
    target = modules[spec.target]
    finished: list[nn.Module] = []  # modules in the order their forward returned
    started_at: list[int] = []  # how many had returned when the target's forward began
    handles = [m.register_forward_hook(lambda m, i, o: finished.append(m)) for m in modules.values()]
    handles.append(target.register_forward_pre_hook(lambda m, i: started_at.append(len(finished))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_model(model, batch["input"])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if target not in finished:
        raise DistillError(f"train_up_to: module {spec.target!r} did not run in the forward pass")
    # the module's input depends on what returned before it began; its output also on its own submodules
    used = finished[: started_at[0]] if spec.capture == "input" else finished[: finished.index(target) + 1]
    return {id(p) for m in used for p in m.parameters(recurse=False)}




def probe(student: nn.Module, terms: list[Term], teacher, batch: dict, device) -> StudentWithTaps:
    """Run one batch through both models: check every tap and term, build the connectors.

    Returns the trainable :class:`StudentWithTaps`. Mistakes come back as one-line :class:`DistillError` s.
    """
    model = StudentWithTaps(student, [tap for t in terms for tap in t.student_taps])
    for term in terms:
        if isinstance(term.fn, nn.Module):
            model.term_modules[term.name] = term.fn.to(device)
    # the probe must not change stateful terms (a queue would hold a probe batch)
    term_states = {name: copy.deepcopy(m.state_dict()) for name, m in model.term_modules.items()}
    was_training = student.training
    student.eval()
    check_inputs(batch, "the first batch")
    try:
        with torch.no_grad():
            s_values = forward(lambda: model(batch["input"]), student, batch, "the student")
            t_values = forward(lambda: teacher(batch), None, batch, "the teacher") if teacher is not None else {}
            for term in terms:
                if term.connector:
                    source = s_values[term.student]
                    connector = build_connector(source.shape, t_values[term.teacher].shape, term.connector)
                    model.add_connector(term.name, term.student, connector.to(source.device))
            # terms run with autograd on: some differentiate inside (a student's Grad-CAM map)
            with torch.enable_grad():
                s_values = forward(lambda: model(batch["input"]), student, batch, "the student")
                for term in terms:
                    _probe_term(term, s_values, t_values, batch)
    except (ValueError, KeyError) as err:
        if isinstance(err, DistillError):
            raise
        raise DistillError(str(err).strip("'\"")) from err
    finally:
        student.train(was_training)
        for name, state in term_states.items():
            # strict=False: a term module that built its layers on the probe batch keeps them
            model.term_modules[name].load_state_dict(state, strict=False)
    return model


def _probe_term(term: Term, s_values: dict, t_values: dict, batch) -> None:
    try:
        value = term(s_values, t_values, batch)
    except DistillError:
        raise
    except Exception as err:  # report which term failed, in one line
        raise DistillError(f"term {term.name!r}: {err}") from err
    if not isinstance(value, torch.Tensor):
        raise DistillError(f"term {term.name!r} must return a tensor (a scalar computed from its inputs with torch "
                           f"operations), got {describe(value)}")
    if value.dim() != 0:
        raise DistillError(f"term {term.name!r} must return a scalar, got shape {tuple(value.shape)}")
    if not value.requires_grad or value.grad_fn is None:
        raise DistillError(f"term {term.name!r} returns a value with no gradient path to the student (a constant, "
                           "or computed from detached tensors): compute it from the student's outputs with torch "
                           "operations, or drop the term")


def forward(call, model: nn.Module | None, batch: dict, who: str):
    """``call()``, a model's forward pass on ``batch``; a failure becomes one line naming the model and the input."""
    try:
        return call()
    except DistillError:
        raise
    except Exception as err:
        raise DistillError(f"{who}'s forward pass failed on the first batch ({cause(err)}); "
                           f"{input_hint(batch['input'], model)}") from err


def input_hint(inputs, model: nn.Module | None) -> str:
    """What to check when a model fails on ``inputs``: their shape and dtype against the model's parameters."""
    shown = inputs if not isinstance(inputs, Mapping) else next(iter(inputs.values()), None)
    text = f"the input is {describe(shown)}"
    param = next((p for p in model.parameters() if p.is_floating_point()), None) if model is not None else None
    dtype = getattr(shown, "dtype", None)
    if param is not None and isinstance(shown, torch.Tensor) and dtype != param.dtype:
        if dtype.is_floating_point:
            return (f"{text} but the model's parameters are {str(param.dtype).replace('torch.', '')}: convert the "
                    f"data (x.to({param.dtype})) or the model")
        return f"{text}: convert it to float (x.float()) unless the model takes integer ids"
    return f"{text}: check that the model is built for inputs of this shape"
