"""Student sizes for ``distill bench speech`` scanned on the validation split (docs/speech.md, "Results").

    PYTHONPATH=src python scripts/speech_student_scan.py HIDDEN LAYERS [METHOD] [EPOCHS] [OPTION=N ...]

Trains one streaming (unidirectional) GRU student of HIDDEN units x LAYERS with METHOD (``ctc``, the default, or
``frame-kd-shift`` / ``seq-kd``: the benchmark's options for that arm) from the benchmark's cached teacher, seed
0, one thread (OPTION=N: more RecurrentCTC options, ``frames_per_step=2`` or ``lookahead=4``), and prints one
JSON line: CER and WER on the **validation** split (the speaker's held-out prompts, whole and cut into words;
the real test recordings are never scored here) and on its words alone (``val_words``, for the student and the
teacher), parameters, the real-time factor on the validation audio, and the teacher's on the same audio (so the
speed-up is read on the same machine in the same run). The scans in docs/speech.md written ``pieces=4`` ran at
commit 283abd2, where this script cut the words itself and the benchmark's splits had none.
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)
from distill import speech_bench as bench  # noqa: E402
from distill.evaluation import count_parameters, evaluate  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.zoo.speech import RecurrentCTC  # noqa: E402

model_options = dict((key, int(value)) for key, value in (a.split("=") for a in sys.argv[1:] if "=" in a))
positional = [a for a in sys.argv[1:] if "=" not in a]
hidden, layers = int(positional[0]), int(positional[1])
arm = positional[2] if len(positional) > 2 else "ctc"
epochs = int(positional[3]) if len(positional) > 3 else bench.STUDENT["train"]["epochs"]
setup = bench.prepare(say=lambda *_: None)
val_words = setup.val_words
_, method, options = bench.ARMS[arm]
torch.manual_seed(0)
student = RecurrentCTC(**{**bench.STUDENT["model"], "hidden": hidden, "layers": layers, **model_options})
start = time.perf_counter()
history = bench._train(student, setup.teacher if method != "ctc" else None, METHODS[method](**options), setup.train,
                       setup.val, {**bench.STUDENT["train"], "epochs": epochs}, seed=0)
seconds = time.perf_counter() - start
val = evaluate(student, setup.val, batch_size=128, task="ctc")
words = {name: evaluate(m, val_words, batch_size=128, task="ctc") for name, m in (("student", student),
                                                                                  ("teacher", setup.teacher))}
timed = bench.real_time_factors({"teacher": setup.teacher, "student": student}, setup.val)
student_rtf, teacher_rtf = timed["student"]["rtf"], timed["teacher"]["rtf"]
print(json.dumps({"hidden": hidden, "layers": layers, **model_options, "arm": arm,
                  "epochs": epochs, "params": count_parameters(student),
                  "val": {k: round(v, 2) for k, v in val.items()}, "val_cer_by_epoch": [h["val/cer"] for h in history],
                  "val_words": {name: {k: round(v, 2) for k, v in w.items()} for name, w in words.items()},
                  "val_words_count": len(val_words),
                  "rtf": round(student_rtf, 4), "teacher_rtf": round(teacher_rtf, 4),
                  "speed_up": round(timed["student"]["speedup"]["rtf"], 2), "train_seconds": round(seconds, 1)}))
