"""Fuzzed recipes: every one is either accepted or refused with a one-line RecipeError, never a crash."""
import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.recipe import Recipe, RecipeError, apply_overrides, parse_recipe, read_recipe_tree

BASE = read_recipe_tree("digits")
PATHS = [
    "name", "seed", "description", "output_dir",
    "data", "data.dataset", "data.val_size", "data.train_size", "data.augment", "data.augment.shift",
    "teacher", "teacher.model", "teacher.options", "teacher.options.channels", "teacher.checkpoint",
    "teacher.cache", "teacher.augment", "teacher.train", "teacher.train.epochs", "teacher.train.lr",
    "student", "student.model", "student.options.hidden", "student.checkpoint",
    "methods", "methods.0", "methods.0.method", "methods.1.alpha", "methods.1.temperature", "methods.1.label",
    "methods.1.terms", "train", "train.epochs", "train.batch_size", "train.optimizer", "train.lr", "train.schedule",
    "train.milestones", "train.warmup_epochs", "train.grad_accum", "train.clip_grad_norm", "train.mixed_precision",
    "train.momentum", "train.nonfinite", "train.cache_teacher", "train.seed", "evaluation.latency_batch_size",
    "unknown_key", "train.unknown", "methods.0.unknown",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["kd", "ce", "hint", "scratch", "mlp", "cnn", "digits", "sgd", "cosine",
                                           "bf16", "/no/such/file.safetensors", "logits", "features.0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["loss", "weight", "method", "student", "teacher", "connector", "temperature", "alpha",
                         "shift", "x"]), inner, max_size=3)),
    max_leaves=6,
)


def mutate(tree, path, value):
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
        if not isinstance(node, (dict, list)):
            return
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=4))
def test_fuzzed_recipes_are_accepted_or_refused_in_one_line(mutations):
    tree = copy.deepcopy(BASE)
    for path, value in mutations:
        mutate(tree, path, value)
    try:
        recipe = parse_recipe(tree)
    except RecipeError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert isinstance(recipe, Recipe)
    for method in recipe.methods:
        method.build()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz._=0123[]{}: -", max_size=30), max_size=3))
def test_fuzzed_set_overrides_never_crash(overrides):
    try:
        parse_recipe(apply_overrides(copy.deepcopy(BASE), overrides))
    except RecipeError as err:
        assert "\n" not in str(err)
