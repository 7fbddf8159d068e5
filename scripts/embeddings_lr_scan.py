"""The learning-rate scan behind ``distill.embeddings_bench.TRAIN`` (docs/embeddings.md, "Schedule").

    PYTHONPATH=src python scripts/embeddings_lr_scan.py LR PAIRS EPOCHS [ARM]

Trains ARM (default ``ml-L3``) of the embeddings benchmark on the first PAIRS training verse pairs for EPOCHS
passes at learning rate LR (the benchmark's other settings, seed 0, one thread) and prints one JSON line with
translation retrieval top-1 both ways and English fidelity on the **validation** books (the test books are
never read).
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)
from distill import embeddings_bench as bench  # noqa: E402
from distill.tasks import retrieval_metrics  # noqa: E402
from distill.zoo.sentence import sentence_embeddings  # noqa: E402

lr, pairs, epochs = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
arm = sys.argv[4] if len(sys.argv) > 4 else "ml-L3"
data = bench.Data(False)
data.pairs["train"] = tuple(side[:pairs] for side in data.pairs["train"])
teacher = bench.teacher_encoder().eval()
bench.TRAIN = {**bench.TRAIN, "lr": lr, "epochs": epochs}
bench.ARMS[arm] = (*bench.ARMS[arm][:3], {k: v for k, v in bench.ARMS[arm][3].items() if k != "lr"})
torch.manual_seed(0)
student, tokenizer = bench.build_student(arm, data, teacher)
start = time.time()
bench.train(student, tokenizer, teacher, arm, data, 0, False)
english, spanish = data.pairs["val"]
reference = sentence_embeddings(teacher, english, data.tokenizer)
found = retrieval_metrics(sentence_embeddings(student, english, tokenizer),
                          sentence_embeddings(student, spanish, tokenizer), reference)
print(json.dumps({"arm": arm, "lr": lr, "pairs": pairs, "epochs": epochs, "seconds": round(time.time() - start),
                  **{k: round(v, 4) for k, v in found.items()}}))
