"""Term bindings: tap aliases, lists of taps, sample indices, Ramp weights, module losses built per term."""
import pytest
import torch
from torch import nn

from distill.recipe import parse_recipe
from distill.taps import TapError, TapRecorder
from distill.terms import Ramp, Term, TermError
from distill.zoo import MODELS, build_model


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2",
                                  "shufflenetv2"])
def test_every_zoo_model_has_stage_and_embedding_aliases(name):
    model = build_model(name).eval()
    aliases = model.tap_aliases
    assert {"stage1", "last_stage", "embedding"} <= set(aliases)
    values = TapRecorder(model, list(aliases)).collect(model(torch.randn(2, 1, 28, 28)))
    assert torch.equal(values["last_stage"], values[max(k for k in aliases if k.startswith("stage"))])
    assert values["embedding"].shape == (2, model.classifier.in_features if hasattr(model, "classifier")
                                         else model.fc.in_features)
    if name != "mlp":  # stages of a conv net shrink (or keep) their resolution in order
        sizes = [values[f"stage{i}"].shape[-1] for i in range(1, len(aliases) - 1)]
        assert sizes == sorted(sizes, reverse=True)


def test_all_models_are_covered_by_the_alias_test():
    assert {"mlp", "cnn", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv2"} <= set(MODELS)


def test_unknown_alias_like_name_suggests_the_aliases():
    model = build_model("resnet8")
    recorder = TapRecorder(model, ["stage9"])
    with pytest.raises(TapError, match="stage1"):
        recorder.collect(model(torch.randn(1, 1, 28, 28)))


def test_lists_of_taps_pass_lists_and_index_is_passed_when_asked():
    seen = {}

    def fn(student, teacher, labels, index=None):
        seen.update(student=student, teacher=teacher, labels=labels, index=index)
        return torch.zeros(())

    term = Term(fn, student=["a", "b"], teacher=["c"], labels=True, index=True)
    values_s = {"a": torch.ones(1), "b": torch.zeros(1)}
    term(values_s, {"c": torch.full((1,), 2.0)}, {"label": torch.tensor([3]), "index": [7]})
    assert [float(v) for v in seen["student"]] == [1.0, 0.0] and float(seen["teacher"][0]) == 2.0
    assert seen["labels"].tolist() == [3] and seen["index"].tolist() == [7] and seen["index"].dtype == torch.long
    assert term.student_taps == ["a", "b"] and term.teacher_taps == ["c"]
    with pytest.raises(TermError, match="connector"):
        Term("hint", student=["a", "b"], teacher="c", connector="auto")
    with pytest.raises(TermError, match="non-empty list"):
        Term(fn, student=[])
    with pytest.raises(TermError, match="needs labels"):
        term(values_s, {"c": torch.ones(1)}, {})


def test_ramp_weights():
    ramp = Term("kd", Ramp(0.0, 1.0, over=0.25))
    assert [ramp.weight_at(p, 8) for p in (0, 1, 2, 5)] == [0.0, 0.5, 1.0, 1.0]
    anneal = Term("kd", Ramp(0.9, 0.5))
    assert anneal.weight_at(4, 8) == pytest.approx(0.7)


def test_a_module_loss_class_gives_each_term_its_own_module():
    class Scale(nn.Module):
        def __init__(self, factor: float = 1.0):
            super().__init__()
            self.factor = nn.Parameter(torch.tensor(factor))

        def forward(self, s, t):
            return self.factor * (s - t).pow(2).mean()

    a, b = Term(Scale, factor=2.0), Term(Scale, factor=2.0)
    assert a.fn is not b.fn and float(a.fn.factor) == 2.0 and a.params == {} and a.name == "scale"
    with pytest.raises(TermError, match="unexpected keyword"):
        Term(Scale, nope=1)
    vid_terms = [Term("vid"), Term("vid")]
    assert vid_terms[0].fn is not vid_terms[1].fn


def test_recipe_terms_take_lists_of_taps_and_module_parameters():
    recipe = parse_recipe({
        "data": {"dataset": "digits"}, "teacher": {"model": "cnn"}, "student": {"model": "cnn"},
        "methods": [{"terms": [{"loss": "ce", "teacher": None},
                               {"loss": "fsp", "student": ["stage1", "stage2"], "teacher": ["stage1", "stage2"]},
                               {"loss": "crd", "weight": 0.5, "queue_size": 64, "feat_dim": 16}]}]})
    ce, flow, crd = recipe.methods[0].build()
    assert flow.student == ["stage1", "stage2"] and crd.index and crd.fn.kwargs["queue_size"] == 64 and crd.fn.kwargs["feat_dim"] == 16
    with pytest.raises(Exception, match="queue_sizes"):
        parse_recipe({"data": {"dataset": "digits"}, "teacher": {"model": "cnn"}, "student": {"model": "cnn"},
                      "methods": [{"terms": [{"loss": "crd", "queue_sizes": 4}]}]})


def test_every_loss_registers_itself_with_its_binding():
    import distill.losses as losses
    from distill.losses.detection import localization_kd_at_objects
    from distill.losses import regression, restoration
    from distill.losses.registry import LOSSES, STAGES, register_loss
    from distill.terms import LOSSES as term_losses

    assert term_losses is LOSSES and STAGES == ("stage1", "stage2", "stage3")
    expected = {
        "ce": (losses.cross_entropy, {"teacher": None, "labels": True}), "kd": (losses.kd_loss, {}),
        "hint": (losses.hint_loss, {"connector": "auto"}), "dkd": (losses.dkd_loss, {"labels": True}),
        "dist": (losses.dist_loss, {"gather": True}), "at": (losses.at_loss, {}), "nst": (losses.nst_loss, {}),
        "sp": (losses.sp_loss, {"gather": True}), "rkd": (losses.rkd_loss, {"gather": True}),
        "pkt": (losses.pkt_loss, {"gather": True}), "cc": (losses.cc_loss, {"gather": True}),
        "vid": (losses.VID, {}), "fsp": (losses.fsp_loss, {"student": list(STAGES), "teacher": list(STAGES)}),
        "ab": (losses.ab_loss, {"connector": "auto"}),
        "crd": (losses.LazyCRD, {"student": "embedding", "teacher": "embedding", "index": True, "gather": True}),
        "cam": (losses.cam_match_loss, {"student": ["last_stage", "logits"],
                                        "teacher": ["gradcam++(last_stage)", "logits"]}),
        "multi_kd": (losses.multi_teacher_kd_loss, {"labels": True}),
        "tf_kd": (losses.tf_kd_loss, {"teacher": None, "labels": True}),
        "dml": (losses.dml_loss, {"teacher": None, "labels": True}),
        "kdcl": (losses.kdcl_loss, {"teacher": None, "labels": True}),
        "one": (losses.one_loss, {"teacher": None, "labels": True}), "logit_l1": (losses.logit_l1, {}),
        "generalized_jsd": (losses.generalized_jsd_loss, {}), "minillm": (losses.minillm_loss, {"labels": True}),
        "attention_mse": (losses.attention_mse, {"student": "attention_scores[-1]", "teacher": "attention_scores[-1]"}),
        "hidden_mse": (losses.hidden_mse, {"student": "hidden[-1]", "teacher": "hidden[-1]", "connector": "auto"}),
        "embedding_mse": (losses.hidden_mse, {"student": "hidden[0]", "teacher": "hidden[0]", "connector": "auto"}),
        "cosine_hidden": (losses.cosine_hidden, {"student": "hidden[-1]", "teacher": "hidden[-1]",
                                                 "connector": "auto"}),
        "pkd": (losses.pkd_loss, {"student": "cls[-1]", "teacher": "cls[-1]", "connector": "auto"}),
        "cilda": (losses.cilda_loss, {"student": "mean[-1]", "teacher": "mean[-1]", "connector": "auto",
                                      "gather": True}),
        "rail_kd": (losses.RailKD, {}),
        "multilingual_mse": (losses.multilingual_mse, {}),
        "ctc": (losses.ctc_loss, {"teacher": None, "labels": True}), "ctc_frame_kd": (losses.ctc_frame_kd, {}),
        "ctc_sequence_kd": (losses.ctc_sequence_kd, {}),
        "detection": (losses.detection_loss, {"student": ["logits", "box"], "teacher": None, "labels": True}),
        "heatmap_kd": (losses.heatmap_kd, {}),
        "masked_imitation": (losses.masked_imitation, {"student": "neck", "teacher": "neck", "labels": True,
                                                       "connector": "conv1x1"}),
        "pearson_kd": (losses.pearson_kd, {"student": "neck", "teacher": "neck", "connector": "conv1x1"}),
        "ld": (losses.localization_kd, {"student": "box", "teacher": "box"}),
        "ld_gt": (localization_kd_at_objects, {"student": "box", "teacher": "box", "labels": True}),
        "fgd": (losses.FGD, {"student": "neck", "teacher": "neck", "labels": True, "connector": "conv1x1"}),
        "gid": (losses.GID, {"student": ["neck", "logits", "box"], "teacher": ["neck", "logits", "box"],
                             "labels": True}),
        "l1": (restoration.l1_loss, {"teacher": None, "labels": True}), "image_kd": (restoration.l1_loss, {}),
        "wavelet_kd": (restoration.wavelet_kd_loss, {}),
        "csd": (restoration.csd_loss, {"student": ["logits", "degraded"]}),
        "mse": (regression.mse_loss, {"teacher": None, "labels": True}),
    }
    softmax = {"ce", "kd", "dkd", "dist", "multi_kd", "tf_kd", "dml", "kdcl", "one", "generalized_jsd", "minillm",
               "ctc", "ctc_frame_kd", "ctc_sequence_kd"}
    expected = {name: (fn, {**binding, "softmax": True} if name in softmax else binding)
                for name, (fn, binding) in expected.items()}
    assert LOSSES == expected
    assert Term("kd").softmax and not Term("hint").softmax
    assert losses.crd_loss is losses.crd_nce_loss and losses.teacher_weights is losses.teacher_mixture_weights
    assert Term("fsp").student == list(STAGES) and Term("crd").index and Term("crd").gather
    with pytest.raises(ValueError, match="registered already"):
        register_loss("kd")(lambda s, t: s)
    with pytest.raises(ValueError, match="unknown binding keys"):
        register_loss("new_loss", teachers="logits")


def test_term_passes_the_batch_mask_and_num_items_to_losses_that_take_them():
    seen = {}

    def per_token(s, t, temperature=1.0, mask=None, num_items=None):
        seen.update(mask=mask, num_items=num_items)
        return torch.zeros(())

    def plain(s, t):
        return torch.zeros(())

    class TokenModule(nn.Module):
        def forward(self, s, t, mask=None):
            seen.update(module_mask=mask)
            return torch.zeros(())

    values = {"logits": torch.zeros(2, 3, 4)}
    mask = torch.tensor([[True, True, False], [True, False, False]])
    batch = {"mask": mask, "num_items": 7, "label": None}
    Term(per_token)(values, values, batch)
    assert seen["mask"] is mask and seen["num_items"] == 7
    Term(per_token)(values, values, {"mask": None})
    assert seen["mask"] is None and seen["num_items"] is None
    Term(plain)(values, values, batch)  # a loss without the keywords is called as before
    Term(TokenModule)(values, values, batch)
    assert seen["module_mask"] is mask and Term(TokenModule).batch_keywords == ("mask",)
    # the registered per-position losses take them: kd over the first three tokens, divided by 7
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    from distill.losses import kd_loss
    loss = Term("kd", temperature=2.0)({"logits": s}, {"logits": t}, batch)
    assert loss.item() == pytest.approx(kd_loss(s[mask], t[mask], 2.0).item() * 3 / 7, rel=1e-6)


def test_term_param_gives_the_value_the_loss_uses():
    assert Term("kd").param("temperature") == 4.0  # kd_loss's default, not 1.0
    assert Term("kd", temperature=2).param("temperature") == 2
    assert Term("dkd").param("beta") == 8.0 and Term("generalized_jsd").param("beta") == 0.5
    assert Term("crd").param("temperature") == 0.07  # a module loss: its constructor's default
    assert Term("crd", temperature=0.1).param("temperature") == 0.1
    assert Term("ce").param("temperature", 1.0) == 1.0
    with pytest.raises(TermError, match="no parameter 'temperature'"):
        Term("ce").param("temperature")
    assert Term("kd", temperature=3).effective_params == {"temperature": 3, "ignore_index": -100}
    term = Term("hint", student="a", teacher="b")
    assert term.student_value_key == "hint<-a" and Term("kd").student_value_key == "logits"
