"""Knowledge distillation inside an existing ``transformers.Trainer`` script.

::

    from distill import Term
    from distill.integrations import DistillationTrainer, student_loss

    trainer = DistillationTrainer(                       # was: Trainer(
        model=student, teacher=teacher,                  # + teacher
        terms=[student_loss(0.5), Term("kd", 0.5, temperature=2)],   # optional: the default is this
        args=TrainingArguments(...), train_dataset=train, eval_dataset=val)
    trainer.train()
    trainer.save_model("student")                        # the student only, model.safetensors

Conventions:

* **The loss** is the weighted sum of :class:`distill.terms.Term` s. A term reads *taps* of the two
  forward passes through :class:`distill.taps.TapRecorder`: ``"logits"``, an output field
  (``"hidden_states[-1]"``, ``"loss"``) or a module path, exactly as with :class:`distill.Distiller`.
  :func:`student_loss` is the term for the student's own ``outputs.loss``, as Hugging Face computes it.
* **Labels** (the batch's ``labels``) go to the student, which computes its own loss, and to terms that
  take labels (``ce``, ``dkd``); never to the teacher (an encoder-decoder teacher gets the
  ``decoder_input_ids`` the labels make, as the student does). Token labels ``(batch, length)`` beside logits
  ``(batch, length, vocab)`` are per-position: for a causal LM (``shift_labels``, by default detected as
  the Trainer does) they are shifted one step left, so that the logits at position ``i`` meet token
  ``i + 1``, and the positions whose label is ``-100`` do not count (the terms' ``mask``). Without
  labels, a per-token term counts the positions of the ``attention_mask`` (shifted likewise).
* **Normalisation** (``num_items_in_batch``): the Trainer counts the labels that are not ``-100`` in
  the whole accumulated batch (over every process with ``average_tokens_across_devices``). Terms whose
  loss takes ``num_items`` (``kd``, ``ce``, ``generalized_jsd``, ``dkd``, ``dist``, :func:`model_loss`)
  divide their sum over counted positions by that count, so the micro-batches of one optimiser step
  add up to the loss of one batch of the accumulated size; any other term is a per-micro-batch mean
  and is divided by the number of micro-batches in the step.
* **The teacher** is frozen (``eval()``, ``requires_grad_(False)``: :func:`distill.teacher.freeze`),
  moved to the training device and run under ``torch.inference_mode()`` (:class:`distill.teacher.LiveTeacher`).
  It is held by the trainer beside the student, never inside it, so it never enters the optimiser,
  accelerate's wrapping (DDP), ``save_model`` or a checkpoint.
* **Logs**: each term's unweighted value as ``loss_<term name>`` beside the Trainer's ``loss``, averaged
  over the optimiser steps of the logging window.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from distill.errors import DistillError, excerpt
from distill.losses.positions import IGNORE_INDEX
from distill.taps import TapRecorder, logits_of
from distill.teacher import LiveTeacher, freeze
from distill.terms import Term, TermError, unique_names

__all__ = ["DistillationTrainer", "model_loss", "student_loss"]


def model_loss(loss: torch.Tensor, labels: torch.Tensor, *, num_items=None) -> torch.Tensor:
    r"""The student's own loss (``outputs.loss``), renormalised to the whole accumulated batch.

    A Hugging Face model's loss is a mean over the label entries that are not ``-100`` in its batch
    (the tokens after the causal shift, the samples of a classifier, the values of a regression).
    With ``num_items`` (the count over the whole accumulated batch) the mean becomes that batch's share:

    .. math:: \mathcal{L} = \bar\ell \cdot \frac{n_{\text{counted here}}}{N_{items}}

    so the micro-batches of one optimiser step add up to the mean over the step, as with one batch.

    Args:
        loss: the model's scalar loss, computed without ``num_items_in_batch``.
        labels: the labels it was computed from, aligned with the logits (shifted for a causal LM).
        num_items: the number of counted labels in the accumulated batch; ``None``: return ``loss``.
    """
    if num_items is None:
        return loss
    counted = (labels != IGNORE_INDEX).sum()
    share = counted / torch.as_tensor(num_items, device=loss.device).reshape(())
    return torch.where(counted > 0, loss * share, torch.zeros_like(loss))  # no labels here: no nan


def student_loss(weight: float = 1.0) -> Term:
    """The term for the student's own loss (:func:`model_loss` of ``outputs.loss``), logged as ``loss_student``."""
    return Term(model_loss, weight, student="loss", teacher=None, labels=True, name="student")


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss mixes the student's own loss with a teacher's signal.

    Every argument of ``Trainer`` keeps its meaning; ``model`` is the student. Added keywords:

    Args:
        teacher: the trained teacher, any ``nn.Module`` taking the same inputs as the student
            (the batch without its labels). It is frozen (``eval()``, no gradients) for good.
        terms: :class:`distill.Term` s (or registered loss names) whose weighted sum is the loss.
            Default: ``[student_loss(1 - alpha), Term("kd", alpha, temperature=temperature)]``.
        alpha: the weight of soft-target KD in the default terms (0.5).
        temperature: its temperature (2.0).
        shift_labels: whether per-token labels are shifted one step left to meet the logits (causal LM);
            ``None``: true for a causal LM (the student's class is one of ``transformers``' causal-LM classes,
            or its ``loss_type`` is the causal-LM loss), false for encoder-decoders and everything else.

    Not supported (each refused in one line): terms with a connector or with learnt parameters (their
    modules would be outside the student's optimiser and checkpoint: use :class:`distill.Distiller`),
    update groups, ``compute_loss_func`` and ``label_smoothing_factor`` (use ``Term("ce", label_smoothing=...)``).
    """

    def __init__(self, model=None, args=None, *trainer_args, teacher: nn.Module | None = None, terms=None,
                 alpha: float | None = None, temperature: float | None = None, shift_labels: bool | None = None,
                 **trainer_kwargs):
        self.terms = _build_terms(terms, alpha, temperature)
        _check_teacher(teacher, model)
        if not (shift_labels is None or isinstance(shift_labels, bool)):
            raise DistillError(f"shift_labels must be True, False or None, got {excerpt(shift_labels)}")
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if self.compute_loss_func is not None:
            raise DistillError("DistillationTrainer computes the loss from its terms: pass the student's loss as a "
                               "Term (terms=[Term(my_loss, ...)]) instead of compute_loss_func")
        if self.label_smoother is not None:
            raise DistillError("label_smoothing_factor is not used by DistillationTrainer: use "
                               "Term('ce', weight, label_smoothing=...) in terms")
        if self.optimizer is not None:
            teacher_ids = {id(p) for p in teacher.parameters()}
            if any(id(p) in teacher_ids for group in self.optimizer.param_groups for p in group["params"]):
                raise DistillError("the optimizer passed to DistillationTrainer holds teacher parameters; "
                                   "build it from the student's parameters only")
        self.teacher = freeze(teacher)
        if not getattr(teacher, "hf_device_map", None):  # a teacher dispatched over devices stays where it is
            self.teacher.to(self.args.device)
        teacher_taps = [tap for term in self.terms for tap in term.teacher_taps]
        self.teacher_signal = LiveTeacher(self.teacher, teacher_taps)
        self.student_taps = list(dict.fromkeys(tap for term in self.terms for tap in term.student_taps))
        self.shift_labels = shift_labels
        self._recorder: TapRecorder | None = None
        # The Trainer counts num_items_in_batch over labels[..., 1:] when this is true; it detects it from the
        # model's loss_type, which misses causal LMs such as GPT2LMHeadModel (loss_type None). Count the positions
        # the terms count.
        self._loss_shifts_labels = self._shifts(self.accelerator.unwrap_model(self.model))
        # Count the labels of every accumulated batch (num_items_in_batch), whatever the student's forward
        # accepts: the Trainer counts them only for models taking loss keywords. This trainer never passes
        # num_items_in_batch to the student's forward (see compute_loss), so nothing else changes.
        self.model_accepts_loss_kwargs = True
        self._term_sums: dict[str, torch.Tensor] = defaultdict(float)
        self._term_steps: set[int] = set()

    # ---- the loss ---------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The weighted sum of the terms on one (micro-)batch; with ``return_outputs``, also the student's outputs.

        The student runs on the whole batch, labels included, so ``outputs.loss`` is its own loss (a mean
        over this micro-batch); the teacher runs on the batch without labels. With ``num_items_in_batch``
        (training, labels present) the result is already normalised for gradient accumulation
        (``loss_is_scaled_for_ga``); without it, it is a per-batch mean the Trainer divides itself.
        """
        student = self.accelerator.unwrap_model(model)
        recorder = self._student_recorder(student)
        outputs = model(**inputs, **_output_flags(recorder))
        if "loss" in self.student_taps and _field(outputs, "loss") is None:
            raise DistillError("the student computed no loss (outputs.loss is None): the batch needs 'labels' for "
                               "student_loss, or leave it out of terms")
        student_values = recorder.collect(outputs)
        teacher_inputs = {k: v for k, v in inputs.items() if k not in (*self.label_names, "labels", "shift_labels")}
        if _needs_decoder_inputs(self.teacher, teacher_inputs, inputs):  # seq2seq: the student made them from labels
            teacher_inputs["decoder_input_ids"] = self.teacher.prepare_decoder_input_ids_from_labels(
                labels=inputs["labels"])
        teacher_values = self.teacher_signal(
            {"input": {**teacher_inputs, **_output_flags(self.teacher_signal.recorder)}})
        batch = self._targets(inputs, outputs, self._shifts(student), num_items_in_batch)

        scaled = num_items_in_batch is not None
        accumulated = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        # under DDP gradients are averaged over processes; a term divided by the count over all of them
        # is multiplied back (as the Trainer does for a model's own loss)
        world = self.accelerator.num_processes if scaled and self.args.average_tokens_across_devices else 1
        progress = float(self.state.epoch or 0.0)
        epochs = float(self.state.num_train_epochs or self.args.num_train_epochs)
        total = None
        for term in self.terms:
            value = term(student_values, teacher_values, batch)
            if not scaled:
                scale, logged = 1.0, 1.0 / accumulated  # the Trainer divides the loss by the micro-batches
            elif "num_items" in term.batch_keywords:
                scale = logged = world
            else:
                scale = logged = 1.0 / accumulated
            weighted = term.weight_at(progress, epochs) * value * scale
            total = weighted if total is None else total + weighted
            if model.training:
                self._term_sums[term.name] = self._term_sums[term.name] + value.detach().float() * logged
        if model.training:
            self._term_steps.add(self.state.global_step)
        self.loss_is_scaled_for_ga = scaled
        return (total, outputs) if return_outputs else total

    def _student_recorder(self, student: nn.Module) -> TapRecorder:
        """The student's tap recorder, made again when the Trainer's model changed (``model_init``)."""
        if self._recorder is None or self._recorder.model is not student:
            if self._recorder is not None:
                self._recorder.remove()
            self._recorder = TapRecorder(student, self.student_taps, model_name="student")
        return self._recorder

    def _shifts(self, student: nn.Module) -> bool:
        """Whether per-token labels are shifted one step left (a causal LM), unless ``shift_labels`` says."""
        if self.shift_labels is not None:
            return self.shift_labels
        if getattr(self, "_loss_shifts_labels", False):  # the Trainer's own answer (from the model's loss_type)
            return True
        encoder_decoder = getattr(getattr(student, "config", None), "is_encoder_decoder", False)
        return type(student).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() and not encoder_decoder

    def _targets(self, inputs, outputs, shift: bool, num_items) -> dict:
        """The batch keys terms read: ``label`` (aligned with the logits), ``mask`` and ``num_items``."""
        labels = inputs.get("shift_labels", inputs.get("labels"))
        try:
            logits = logits_of(outputs)
        except DistillError:
            logits = None
        per_token = isinstance(logits, torch.Tensor) and logits.dim() >= 3
        mask = None
        if isinstance(labels, torch.Tensor) and per_token and labels.dim() == logits.dim() - 1 \
                and not labels.is_floating_point():
            if shift and "shift_labels" not in inputs:
                labels = torch.cat([labels[..., 1:], labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)], -1)
            mask = labels != IGNORE_INDEX
        elif labels is None and per_token and isinstance(inputs.get("attention_mask"), torch.Tensor):
            mask = inputs["attention_mask"].bool()
            if shift:
                mask = torch.cat([mask[..., 1:], mask.new_zeros((*mask.shape[:-1], 1))], -1)
        return {"label": labels, "mask": mask, "num_items": num_items}

    # ---- logs -------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each term's mean over the logging window (``loss_kd``, ``loss_student`` ...) to a training log."""
        if "loss" in logs and self._term_sums:
            steps = max(len(self._term_steps), 1)
            for name, value in self._term_sums.items():
                value = torch.as_tensor(value, device=self.args.device, dtype=torch.float32)
                if self.accelerator.num_processes > 1:
                    value = self.accelerator.gather(value.reshape(1)).mean()
                logs[f"loss_{name}"] = value.item() / steps
            self._term_sums.clear()
            self._term_steps.clear()
        super().log(logs, start_time)


def _build_terms(terms, alpha, temperature) -> list[Term]:
    """The checked terms: the given ones (names become ``Term(name)``), or the default from alpha and temperature."""
    if terms is None:
        alpha = 0.5 if alpha is None else alpha
        temperature = 2.0 if temperature is None else temperature
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise DistillError(f"alpha is the weight of the teacher's soft targets, between 0 and 1; got {excerpt(alpha)}")
        return [student_loss(1 - alpha), Term("kd", alpha, temperature=temperature)]
    if alpha is not None or temperature is not None:
        raise DistillError("pass either terms or alpha/temperature (the default terms), not both; set the "
                           "temperature on the term: Term('kd', 0.5, temperature=2)")
    if isinstance(terms, (Term, str)) or not isinstance(terms, (list, tuple)) or not terms:
        raise TermError(f"terms must be a non-empty list of Term or loss names, got {excerpt(terms)}")
    built = []
    for entry in terms:
        if isinstance(entry, str):
            entry = Term(entry)  # an unknown name is TermError with the nearest registered names
        if not isinstance(entry, Term):
            raise TermError(f"terms must hold Term objects or registered loss names, got {excerpt(entry)}")
        if entry.connector is not None:
            raise TermError(f"term {entry.name!r}: connectors are trained and saved beside the student, which "
                            "DistillationTrainer does not do; use distill.Distiller, or connector=None")
        if isinstance(entry.fn, nn.Module) and any(True for _ in entry.fn.parameters()):
            raise TermError(f"term {entry.name!r}: a loss with learnt parameters is outside the Trainer's optimiser "
                            "and checkpoints; use distill.Distiller")
        if entry.group:
            raise TermError(f"term {entry.name!r}: update groups need distill.Distiller; DistillationTrainer "
                            "updates the student once per batch")
        built.append(entry)
    return unique_names(built)


def _check_teacher(teacher, student) -> None:
    if not isinstance(teacher, nn.Module):
        raise DistillError(f"DistillationTrainer needs teacher=<a trained nn.Module>, got {excerpt(teacher)}")
    if teacher is student:
        raise DistillError("the teacher and the student are the same model; pass a separate student")
    if isinstance(student, nn.Module):
        student_ids = {id(p) for p in student.parameters()}
        if any(id(p) in student_ids for p in teacher.parameters()):
            raise DistillError("the teacher shares parameters with the student (freezing it would freeze them); "
                               "copy the layers into the student with copy.deepcopy")


def _needs_decoder_inputs(teacher: nn.Module, teacher_inputs, inputs) -> bool:
    """Whether an encoder-decoder teacher must be given the decoder inputs its labels would have made."""
    return (getattr(getattr(teacher, "config", None), "is_encoder_decoder", False)
            and "decoder_input_ids" not in teacher_inputs and "decoder_inputs_embeds" not in teacher_inputs
            and isinstance(inputs.get("labels"), torch.Tensor)
            and hasattr(teacher, "prepare_decoder_input_ids_from_labels"))


def _field(outputs, name: str):
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _output_flags(recorder: TapRecorder) -> dict[str, bool]:
    """``output_hidden_states=True`` / ``output_attentions=True`` when a tap reads that output field."""
    fields = {spec.target for spec in recorder.specs.values() if spec.kind == "output"}
    return {f"output_{field}": True for field in ("hidden_states", "attentions") if field in fields}
