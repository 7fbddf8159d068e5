"""The model zoo and the datasets that ship offline."""
from distill.zoo.datasets import DataMissing, Splits, load_dataset
from distill.zoo import cifar  # noqa: F401  (registers the CIFAR-style models of the KD literature)
from distill.zoo import lenet  # noqa: F401,E402  (registers lenet5 and lenet5_half, the data-free MNIST pair)
from distill.zoo import bert, gpt, sentence, text  # noqa: F401,E402  (bert, gpt, minilm, minilm_sentence)
from distill.zoo import speech  # noqa: F401,E402  (registers the CTC acoustic models: ctc_bigru, ctc_gru)
from distill.zoo import seq2seq  # noqa: F401,E402  (registers the encoder-decoder: seq2seq)
from distill.zoo import restoration  # noqa: F401,E402  (registers the restoration networks: dncnn, srnet)
from distill.zoo import detection  # noqa: F401,E402  (registers the detectors: centerdet, centerdet_teacher, ...)
from distill.zoo.models import MODELS, build_model, register_model

__all__ = ["DataMissing", "MODELS", "Splits", "build_model", "load_dataset", "register_model"]
