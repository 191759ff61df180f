"""The KD approach: query selection, KD formulas, the criterion's ignore_queries and
the DistillTask on a random tiny FC-CLIP (64x128 images)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vocabseg.approaches.distill import (
    DistillTask,
    kd_class_loss,
    kd_mask_loss,
    out_class_indices,
    select_out_queries,
)
from vocabseg.approaches.study_model import ModelSpec, build_model, vocab_ids
from vocabseg.data.vocab import make_split
from vocabseg.engine import TrainConfig, train
from vocabseg.errors import InputError
from vocabseg.losses import build_criterion
from vocabseg.models.fcclip import TextClassifier, load_fcclip_checkpoint

torch.set_num_threads(1)

H, W = 64, 128
K = 19


# ----------------------------------------------------------------- pure functions


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_select_out_queries_by_hand():
    logits = torch.tensor(
        [[[3.0, 0.0, 0.0, 0.0], [0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 1.0, 4.0, 0.0]]]
    )  # K = 3, column 3 is void; argmax 0, 1, void, 2
    assert select_out_queries(logits, [1, 2]).tolist() == [[False, True, False, True]]
    assert select_out_queries(logits, torch.tensor([0])).tolist() == [[True, False, False, False]]
    assert not select_out_queries(logits, []).any()


def test_kd_class_loss_is_the_hand_computed_mean_kl():
    teacher = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 0.0, 9.0], [1.0, 3.0, 0.0]]])
    student = torch.tensor([[[0.0, 1.0, 0.0], [5.0, -5.0, 0.0], [1.0, 1.0, 1.0]]])
    selected = torch.tensor([[True, False, True]])
    expected = 0.0
    for q in (0, 2):
        p_t, p_s = _softmax(teacher[0, q].tolist()), _softmax(student[0, q].tolist())
        expected += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s))
    expected /= 2
    assert kd_class_loss(student, teacher, selected).item() == pytest.approx(expected, rel=1e-6)
    # reversed roles give another value: the KL is not symmetric, teacher first
    assert kd_class_loss(teacher, student, selected).item() != pytest.approx(expected, rel=1e-3)


def test_kd_mask_loss_is_the_hand_computed_binary_kl():
    teacher = torch.tensor([[[[0.0, 2.0]], [[50.0, -50.0]]]])  # [1, 2, 1, 2]
    student = torch.tensor([[[[1.0, -1.0]], [[-50.0, 50.0]]]])
    selected = torch.tensor([[True, False]])  # the second query (huge KL) is not selected
    terms = []
    for t_logit, s_logit in ((0.0, 1.0), (2.0, -1.0)):
        t, s = _sigmoid(t_logit), _sigmoid(s_logit)
        terms.append(t * math.log(t / s) + (1 - t) * math.log((1 - t) / (1 - s)))
    expected = sum(terms) / 2  # mean over the 2 pixels, 1 selected query
    assert kd_mask_loss(student, teacher, selected).item() == pytest.approx(expected, rel=1e-6)
    both = torch.tensor([[True, True]])
    assert kd_mask_loss(student, teacher, both).item() > 10 * expected  # the big one now counts


def test_kd_terms_are_zero_for_empty_selection_or_equal_outputs_and_only_student_gets_gradient():
    gen = torch.Generator().manual_seed(0)
    t_logits, t_masks = torch.randn(2, 5, 4, generator=gen), 4 * torch.randn(2, 5, 3, 3, generator=gen)
    s_logits = torch.randn(2, 5, 4, generator=gen, requires_grad=True)
    s_masks = (4 * torch.randn(2, 5, 3, 3, generator=gen)).requires_grad_(True)
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert kd_class_loss(s_logits, t_logits, none).item() == 0.0
    assert kd_mask_loss(s_masks, t_masks, none).item() == 0.0
    some = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    assert kd_class_loss(t_logits, t_logits.clone(), some).item() == 0.0
    assert kd_mask_loss(t_masks, t_masks.clone(), some).item() == 0.0

    t_logits.requires_grad_(True)
    t_masks.requires_grad_(True)
    (kd_class_loss(s_logits, t_logits, some) + kd_mask_loss(s_masks, t_masks, some)).backward()
    assert t_logits.grad is None and t_masks.grad is None
    # gradient on the selected queries only
    assert s_logits.grad[some].abs().sum() > 0 and s_logits.grad[~some].abs().sum() == 0
    assert s_masks.grad[some].abs().sum() > 0 and s_masks.grad[~some].abs().sum() == 0


def test_out_class_indices_of_a_split():
    ids = vocab_ids(None)
    idx = out_class_indices(make_split("008"), ids)
    assert idx == list(range(11, 19))  # the 8 things are the last 8 train ids
    assert out_class_indices(make_split("002"), ids) == [11, 12]  # person, rider
    with pytest.raises(InputError, match="not in the test vocabulary"):
        out_class_indices(make_split("008"), ids[:11])


# ---------------------------------------------------------- criterion ignore_queries


def _nll(row, target):
    return -math.log(_softmax(row)[target])


def _ce_setup():
    """B=1, Q=3, K=2; one target (class 1, left half). The final layer's query 0 and
    the aux layer's query 2 predict it; the others predict empty masks."""
    target_mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    target_mask[:, :, :8] = True
    good = torch.full((4, 4), -8.0)
    good[:, :2] = 8.0
    bad = torch.full((4, 4), -8.0)
    final_logits = torch.tensor([[[0.0, 3.0, 0.0], [1.0, 0.5, 0.2], [0.3, -0.2, 1.0]]])
    aux_logits = torch.tensor([[[0.5, 0.0, 0.7], [0.1, 0.2, 0.3], [-1.0, 2.0, 0.0]]])
    outputs = {
        "pred_logits": final_logits,
        "pred_masks": torch.stack([good, bad, bad])[None],
        "aux_outputs": [{"pred_logits": aux_logits, "pred_masks": torch.stack([bad, bad, good])[None]}],
    }
    targets = [{"labels": torch.tensor([1]), "masks": target_mask, "seed": 3}]
    return outputs, targets


def _hand_ce(logits, matched, ignored):
    """Weighted CE, class weights 1 / 0.1 (void = 2), matched query -> class 1."""
    num, den = 0.0, 0.0
    for q, row in enumerate(logits[0].tolist()):
        if q != matched and q in ignored:
            continue
        target, weight = (1, 1.0) if q == matched else (2, 0.1)
        num += weight * _nll(row, target)
        den += weight
    return num / den


@pytest.mark.parametrize("ignored", [(), (1,), (0,), (0, 1, 2), (1, 2)])
def test_ignore_queries_removes_unmatched_flagged_queries_from_ce(ignored):
    outputs, targets = _ce_setup()
    criterion = build_criterion(2, num_points=64, num_aux=1)
    flags = torch.zeros(3, dtype=torch.bool)
    flags[list(ignored)] = True
    losses = criterion(outputs, [{**targets[0], "ignore_queries": flags}])
    assert losses["loss_ce"].item() == pytest.approx(_hand_ce(outputs["pred_logits"], 0, ignored), rel=1e-6)
    aux = outputs["aux_outputs"][0]["pred_logits"]
    assert losses["loss_ce_0"].item() == pytest.approx(_hand_ce(aux, 2, ignored), rel=1e-6)
    plain = criterion(outputs, targets)
    assert plain["loss_ce"].item() == pytest.approx(_hand_ce(outputs["pred_logits"], 0, ()), rel=1e-6)
    if ignored in ((), (0,)):  # nothing flagged, or only the matched query: no change
        assert losses["loss_ce"].item() == plain["loss_ce"].item()
    else:
        assert losses["loss_ce"].item() != pytest.approx(plain["loss_ce"].item(), rel=1e-4)
    # mask terms are untouched
    assert losses["loss_mask"].item() == plain["loss_mask"].item()


def test_ignore_queries_on_every_query_of_an_empty_image_gives_zero_ce():
    outputs, _ = _ce_setup()
    logits = outputs["pred_logits"].clone().requires_grad_(True)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 16, 16, dtype=torch.bool),
              "seed": 1, "ignore_queries": torch.ones(3, dtype=torch.bool)}]
    criterion = build_criterion(2, num_points=64, deep_supervision=False)
    loss = criterion.loss_labels({"pred_logits": logits}, empty, [(torch.zeros(0, dtype=torch.long),) * 2], 1.0)
    assert loss["loss_ce"].item() == 0.0
    loss["loss_ce"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="ignore_queries"):
        bad = [{**empty[0], "ignore_queries": torch.ones(4, dtype=torch.bool)}]
        criterion.loss_labels({"pred_logits": logits}, bad, [(torch.zeros(0, dtype=torch.long),) * 2], 1.0)


# ----------------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = build_model(ModelSpec(preset="tiny"), None)
    dim = model.backbone.dim_latent
    gen = torch.Generator().manual_seed(1)
    text = TextClassifier(
        embeddings=F.normalize(torch.randn(K, dim, generator=gen), dim=-1),
        num_synonyms=[1] * K,
        class_names=[[f"class {k}"] for k in range(K)],
        clip_model="tiny",
    )
    images = torch.rand(2, 3, H, W, generator=gen) * 255
    with torch.no_grad():
        logits = model(images, text.embeddings, text.num_synonyms)["pred_logits"]
    classes = logits.argmax(-1).flatten()
    real = classes[classes < K]
    assert real.numel() > 0, "random tiny model predicts void everywhere"
    out_idx = [int(real.mode().values)]  # a class the teacher predicts for some queries
    return model, text, images, out_idx


def _targets(seed: int = 0):
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, :32] = True
    masks[1, 32:, :64] = True
    return [
        {"labels": torch.tensor([0, 2]), "masks": masks, "seed": seed},
        {"labels": torch.tensor([5]), "masks": masks[1:].clone(), "seed": seed + 1},
    ]


def test_kd_terms_zero_for_identical_student_positive_after_perturbation(base):
    model, text, images, out_idx = base
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    task = DistillTask(student, teacher, text, out_idx, num_points=256)
    with torch.no_grad():
        selected = select_out_queries(task.teacher_outputs(images, text.embeddings)["pred_logits"], task.out_idx)
    assert 0 < int(selected.sum()) < selected.numel()
    terms = task.losses(student, images, _targets())
    assert terms["loss_kd_cls"].item() == 0.0 and terms["loss_kd_mask"].item() == 0.0
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())

    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for p in student.sem_seg_head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    terms = task.losses(student, images, _targets())
    assert terms["loss_kd_cls"].item() > 0 and terms["loss_kd_mask"].item() > 0
    # no out-class (configuration 000): S is empty, KD is 0, CE is the plain criterion's
    plain_task = DistillTask(student, teacher, text, [], num_points=256)
    terms = plain_task.losses(student, images, _targets())
    assert terms["loss_kd_cls"].item() == 0.0 and terms["loss_kd_mask"].item() == 0.0
    ref = plain_task.criterion(student(images, text.embeddings, text.num_synonyms), _targets())
    assert terms["loss_ce"].item() == pytest.approx(2.0 * ref["loss_ce"].item(), rel=1e-6)


def test_losses_are_the_criterion_plus_weighted_kd_of_the_final_layer(base):
    model, text, images, out_idx = base
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in student.sem_seg_head.predictor.parameters():
            p.mul_(1.1)
    task = DistillTask(student, teacher, text, out_idx, num_points=256, kd_class_weight=3.0, kd_mask_weight=7.0)
    terms = task.losses(student, images, _targets())
    with torch.no_grad():
        s_out = student(images, text.embeddings, text.num_synonyms)
        t_out = teacher(images, text.embeddings, text.num_synonyms)
    selected = select_out_queries(t_out["pred_logits"], out_idx)
    cls = kd_class_loss(s_out["pred_logits"], t_out["pred_logits"], selected)
    mask = kd_mask_loss(s_out["pred_masks"], t_out["pred_masks"], selected)
    assert terms["loss_kd_cls"].item() == pytest.approx(3.0 * cls.item(), rel=1e-5)
    assert terms["loss_kd_mask"].item() == pytest.approx(7.0 * mask.item(), rel=1e-5)
    # the CE term is the criterion's with the unmatched selected queries ignored
    criterion = build_criterion(K, num_points=256, num_aux=student.config.dec_layers)
    flagged = [{**t, "ignore_queries": selected[b]} for b, t in enumerate(_targets())]
    ref = criterion(s_out, flagged)
    assert terms["loss_ce"].item() == pytest.approx(2.0 * ref["loss_ce"].item(), rel=1e-5)
    assert terms["loss_dice_0"].item() == pytest.approx(5.0 * ref["loss_dice_0"].item(), rel=1e-5)
    plain = criterion(s_out, _targets())
    assert ref["loss_ce"].item() != pytest.approx(plain["loss_ce"].item(), rel=1e-4)


def test_gradients_reach_the_student_never_the_teacher(base):
    model, text, images, out_idx = base
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in student.sem_seg_head.parameters():
            p.mul_(0.9)
    teacher.train()  # the task puts it back to eval
    task = DistillTask(student, teacher, text, out_idx, num_points=256)
    assert not teacher.training
    student_params = {id(p) for p in task.model.parameters()}
    assert not any(id(p) in student_params for p in teacher.parameters())
    student.train()
    terms = task.losses(student, images, _targets())
    assert not teacher.training
    (terms["loss_kd_cls"] + terms["loss_kd_mask"]).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.sem_seg_head.predictor.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_task_arguments_are_checked(base):
    model, text, _, _ = base
    with pytest.raises(ValueError, match="separate"):
        DistillTask(model, model, text, [11])
    shared = copy.deepcopy(model)
    shared.sem_seg_head = model.sem_seg_head  # shares trainable weights
    with pytest.raises(ValueError, match="shares trainable"):
        DistillTask(model, shared, text, [11])
    with pytest.raises(InputError, match="out_class_indices"):
        DistillTask(copy.deepcopy(model), copy.deepcopy(model), text, [19])


class _RectDataset:
    """Two 64x128 images with two in-class rectangles each."""

    def __len__(self) -> int:
        return 2

    def get(self, index: int, seed: int):
        gen = torch.Generator().manual_seed(index)
        target = _targets(seed)[index]
        return torch.rand(3, H, W, generator=gen) * 255, target


def test_training_with_the_shared_trainer_changes_only_the_student(base, tmp_path):
    model, text, _, out_idx = base
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = DistillTask(student, teacher, text, out_idx, num_points=256)
    cfg = TrainConfig(iters=2, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=2)
    train(task, _RectDataset(), cfg, out=tmp_path / "kd.pth", state_dir=tmp_path / "state",
          metrics_log=tmp_path / "metrics.jsonl")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {"loss_kd_cls", "loss_kd_mask"} <= set(records[0])
    assert records[0]["loss_kd_cls"] == 0.0  # student == teacher at the first step
    ckpt = torch.load(tmp_path / "state" / "ckpt_2.pt", weights_only=True)
    assert set(ckpt["model"]) <= set(student.state_dict())
    exported = build_model(ModelSpec(preset="tiny"), None)
    load_fcclip_checkpoint(exported, tmp_path / "kd.pth")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in student.state_dict().items())
    changed = [k for k in before if not torch.equal(before[k], student.state_dict()[k])]
    assert any(k.startswith("sem_seg_head.") for k in changed)


def test_one_backbone_pass_per_step_gives_the_separate_passes_results(base):
    """Teacher and student hold the same frozen CLIP: a KD step runs it once (it ran
    twice, once per model) and the heads see bit-identical features either way."""
    model, text, images, out_idx = base
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in student.sem_seg_head.parameters():
            p.mul_(0.95)
    task = DistillTask(student, teacher, text, out_idx, num_points=256)
    calls = []
    for name, m in (("student", student), ("teacher", teacher)):
        forward = m.backbone.forward
        m.backbone.forward = lambda x, forward=forward, name=name: calls.append(name) or forward(x)
    terms = task.losses(student, images, _targets())
    assert len(calls) == 1
    features = task.backbone_features(images)
    with torch.no_grad():
        shared = student(images, text.embeddings, text.num_synonyms, features=features)
        own = student(images, text.embeddings, text.num_synonyms)
    assert torch.equal(shared["pred_logits"], own["pred_logits"]) and torch.equal(shared["pred_masks"], own["pred_masks"])
    assert terms["loss_kd_cls"].item() > 0


def test_a_teacher_with_another_backbone_is_refused(base):
    model, text, _, out_idx = base
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        next(teacher.backbone.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="frozen CLIP backbone differs"):
        DistillTask(copy.deepcopy(model), teacher, text, out_idx)
