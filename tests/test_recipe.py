import pytest

from distill.recipe import RecipeError, dump_recipe, load_recipe, parse_recipe, read_recipe_tree


def test_bundled_recipes_validate():
    for name in ("default", "digits", "hinton-mnist"):
        recipe = load_recipe(name)
        assert recipe.methods and recipe.student.model


def test_overrides_are_applied_and_typed():
    recipe = load_recipe("digits", ["train.epochs=3", "student.options.hidden=[16, 8]", "methods.1.temperature=2",
                                    "data.augment.shift=1"])
    assert recipe.train.epochs == 3
    assert recipe.student.options["hidden"] == [16, 8]
    assert recipe.methods[1].build()[-1].params["temperature"] == 2
    assert recipe.data.augment.shift == 1


def test_dumped_recipe_reads_back_the_same():
    recipe = load_recipe("default", ["train.epochs=2"])
    import yaml

    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epoch=3", "train.epoch"),               # unknown key
        ("train.epochs=many", "train.epochs"),          # wrong type
        ("train.epochs=0", "train.epochs"),             # out of range
        ("train.optimizer=lbfgs", "train.optimizer"),   # not a choice
        ("student.model=resnet9000", "student.model"),  # unknown model
        ("data.dataset=imagenet", "data.dataset"),      # unknown dataset
        ("teacher.checkpoint=/no/such/file.safetensors", "teacher.checkpoint"),  # missing file
        ("methods.1.temprature=2", "methods.1"),        # unknown method parameter
        ("methods.0.method=magic", "methods.0"),        # unknown method
        ("bogus=1", "bogus"),                           # unknown top-level key
    ],
)
def test_bad_recipes_name_the_field(override, field):
    with pytest.raises(RecipeError) as err:
        load_recipe("digits", [override])
    message = str(err.value)
    assert f"'{field}'" in message, message
    assert "\n" not in message


def test_method_needing_a_teacher_without_one():
    tree = read_recipe_tree("digits")
    del tree["teacher"]
    with pytest.raises(RecipeError, match="needs a teacher"):
        parse_recipe(tree)


def test_custom_terms_in_a_recipe():
    tree = read_recipe_tree("digits")
    tree["methods"] = [{"label": "mine", "terms": [{"loss": "ce", "weight": 0.3},
                                                   {"loss": "kd", "weight": 0.7, "temperature": 3}]}]
    terms = parse_recipe(tree).methods[0].build()
    assert [t.name for t in terms] == ["ce", "kd"]
    assert terms[0].teacher is None and terms[0].labels
    assert terms[1].params == {"temperature": 3}
    tree["methods"][0]["terms"][1]["temp"] = 3
    with pytest.raises(RecipeError, match="temp"):
        parse_recipe(tree)


def test_missing_recipe_file_and_bad_set_syntax(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe("digits", ["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(bad)


def test_train_seed_is_refused_in_favour_of_the_top_level_seed():
    with pytest.raises(RecipeError, match="top-level 'seed'"):
        load_recipe("digits", ["train.seed=3"])


def test_teacher_checkpoints_must_be_weight_files(tmp_path):
    other = tmp_path / "teacher.pkl"
    other.write_bytes(b"not loaded")
    with pytest.raises(RecipeError, match="expected .safetensors"):
        load_recipe("digits", [f"teacher.checkpoint={other}"])


def test_a_teacher_checkpoint_is_used_instead_of_training(tmp_path, cache_dir):
    from safetensors.torch import save_model

    from distill.experiment import run_recipe
    from distill.zoo import build_model

    recipe = load_recipe("digits", ["train.epochs=1", "train.progress=false"])
    teacher = build_model("cnn", (1, 8, 8), 10, **recipe.teacher.options)
    save_model(teacher, str(tmp_path / "t.safetensors"))
    recipe = load_recipe("digits", ["train.epochs=1", "train.progress=false", f"teacher.checkpoint={tmp_path / 't.safetensors'}"])
    summary = run_recipe(recipe, tmp_path / "run")
    assert summary["rows"][0]["source"] == str(tmp_path / "t.safetensors")
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained
    wrong = build_model("mlp", (1, 8, 8), 10, hidden=[3])
    save_model(wrong, str(tmp_path / "wrong.safetensors"))
    recipe = load_recipe("digits", [f"teacher.checkpoint={tmp_path / 'wrong.safetensors'}"])
    with pytest.raises(RecipeError, match="teacher.checkpoint"):
        run_recipe(recipe, tmp_path / "run2")


def test_a_teacher_can_train_on_more_of_the_training_split_than_its_students(tmp_path, cache_dir, monkeypatch):
    """teacher.train_size: 'all' trains the teacher on the whole training split while the students keep
    data.train_size (a subset of it); the teacher cache keys the teacher's own size."""
    import distill.run_models as run_models
    from distill.experiment import run_recipe
    from distill.run_models import teacher_key

    seen = []
    real_fit = run_models.Distiller.fit

    def spy(self, train, val=None, **kwargs):
        seen.append(len(train))
        return real_fit(self, train, val, **kwargs)

    monkeypatch.setattr(run_models.Distiller, "fit", spy)
    base = ["train.epochs=1", "teacher.train.epochs=1", "data.train_size=300", "methods=[{method: scratch}]"]
    run_recipe(load_recipe("digits", [*base, "teacher.train_size=all"]), tmp_path / "run")
    whole = len(run_models.load_data(load_recipe("digits")).train)
    assert seen == [whole, 300] and whole > 300  # the teacher, then the student
    assert teacher_key(load_recipe("digits", [*base, "teacher.train_size=all"])) != teacher_key(load_recipe("digits", base))
    assert teacher_key(load_recipe("digits", base)) == teacher_key(load_recipe("digits", [*base, "teacher.train_size=null"]))
    # a teacher with its own size is the same teacher whatever subset its students see
    assert teacher_key(load_recipe("digits", [*base, "teacher.train_size=all"])) == teacher_key(
        load_recipe("digits", [*base, "teacher.train_size=all", "data.train_size=500"]))
    for bad in ("0", "-5", "some", "true"):
        with pytest.raises(RecipeError, match="teacher.train_size"):
            load_recipe("digits", [f"teacher.train_size={bad}"])


def test_teacher_cache_key_ignores_settings_that_do_not_change_training():
    from distill.run_models import teacher_key as _teacher_key

    base = _teacher_key(load_recipe("digits"))
    assert _teacher_key(load_recipe("digits", ["teacher.train.progress=false", "teacher.train.log_every=7"])) == base
    assert _teacher_key(load_recipe("digits", ["teacher.train.lr=0.5"])) != base
    assert _teacher_key(load_recipe("digits", ["seed=1"])) != base
    assert _teacher_key(load_recipe("digits", ["train.epochs=2"])) == base  # the students' schedule
    # the students' augmentation does not change a teacher with its own augmentation
    fixed = load_recipe("digits", ["teacher.augment={shift: 1}"])
    assert _teacher_key(load_recipe("digits", ["teacher.augment={shift: 1}", "data.augment.shift=2"])) == _teacher_key(fixed)
    assert _teacher_key(load_recipe("digits", ["data.augment.shift=2"])) != base  # ... but does when it is shared


@pytest.mark.parametrize("override, needle", [("methods.1.temperature='4'", "temperature"),
                                              ("methods.1.alpha=2", "alpha"), ("methods.1.alpha=null", "alpha")])
def test_method_parameters_are_type_and_range_checked(override, needle):
    with pytest.raises(RecipeError, match=needle):
        load_recipe("digits", [override])
