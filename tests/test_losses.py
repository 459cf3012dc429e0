"""Tests for rankers.losses: hand-computed values, masking, dtypes, gradients, registry."""
from __future__ import annotations

import math
import random

import pytest
import torch

from rankers.losses import (
    DISTILLATION_LOSSES,
    get_distillation_loss,
    m3se,
    margin_mse,
    one_hot_ce,
    pointwise_mse,
    rankdistil_pairwise,
    softmax_ce,
    softmax_kl,
)

# Two queries x four candidates, used by most hand-computed tests.
STUDENT = [[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0]]
TEACHER = [[3.0, 0.0, 1.0, -2.0], [1.0, 2.0, -1.0, 2.5]]
LABELS = [[True, False, False, False], [False, True, True, False]]

ALL_LOSSES = {**DISTILLATION_LOSSES, "one_hot_ce": one_hot_ce}


def tensors(student=STUDENT, teacher=TEACHER, labels=LABELS):
    return (
        torch.tensor(student, requires_grad=True),
        torch.tensor(teacher),
        torch.tensor(labels, dtype=torch.bool),
    )


def py_softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def logistic(x: float) -> float:
    """log(1 + exp(-x))."""
    return math.log(1.0 + math.exp(-x))


# ---------------------------------------------------------------- hand-computed values


def test_one_hot_ce_by_hand():
    s, _, y = tensors()
    # q1: single positive (index 0); q2: positives 1 and 2, target 1/2 each.
    z1 = math.exp(2.0) + math.exp(1.0) + math.exp(0.5) + math.exp(-1.0)
    q1 = -math.log(math.exp(2.0) / z1)
    z2 = math.exp(0.0) + math.exp(3.0) + math.exp(1.0) + math.exp(2.0)
    q2 = -0.5 * (math.log(math.exp(3.0) / z2) + math.log(math.exp(1.0) / z2))
    assert one_hot_ce(s, None, y).item() == pytest.approx((q1 + q2) / 2, rel=1e-6)


def test_one_hot_ce_temperature_by_hand():
    s, _, y = tensors()
    # tau = 0.5 doubles the logits.
    z1 = math.exp(4.0) + math.exp(2.0) + math.exp(1.0) + math.exp(-2.0)
    q1 = -(4.0 - math.log(z1))
    z2 = math.exp(0.0) + math.exp(6.0) + math.exp(2.0) + math.exp(4.0)
    q2 = -0.5 * ((6.0 - math.log(z2)) + (2.0 - math.log(z2)))
    got = one_hot_ce(s, labels=y, temperature=0.5).item()
    assert got == pytest.approx((q1 + q2) / 2, rel=1e-6)


def test_pointwise_mse_by_hand():
    s, t, y = tensors()
    q1 = ((2 - 3) ** 2 + (1 - 0) ** 2 + (0.5 - 1) ** 2 + (-1 + 2) ** 2) / 4  # 0.8125
    q2 = ((0 - 1) ** 2 + (3 - 2) ** 2 + (1 + 1) ** 2 + (2 - 2.5) ** 2) / 4  # 1.5625
    assert pointwise_mse(s, t, y).item() == pytest.approx((q1 + q2) / 2)
    assert pointwise_mse(s, t, y).item() == pytest.approx(1.1875)


def test_margin_mse_by_hand():
    s, t, y = tensors()
    # q1: P={0}, N={1,2,3}
    q1 = (((2 - 1) - (3 - 0)) ** 2 + ((2 - 0.5) - (3 - 1)) ** 2 + ((2 + 1) - (3 + 2)) ** 2) / 3
    # q2: P={1,2}, N={0,3}
    q2 = (
        ((3 - 0) - (2 - 1)) ** 2
        + ((3 - 2) - (2 - 2.5)) ** 2
        + ((1 - 0) - (-1 - 1)) ** 2
        + ((1 - 2) - (-1 - 2.5)) ** 2
    ) / 4
    assert q1 == pytest.approx(2.75) and q2 == pytest.approx(5.375)
    assert margin_mse(s, t, y).item() == pytest.approx((q1 + q2) / 2)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_softmax_kl_and_ce_by_hand(temperature):
    s, t, y = tensors()
    kl_total, ce_total = 0.0, 0.0
    for s_row, t_row in zip(STUDENT, TEACHER):
        p = py_softmax([x / temperature for x in t_row])
        q = py_softmax([x / temperature for x in s_row])
        kl_total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)) * temperature**2
        ce_total += -sum(pi * math.log(qi) for pi, qi in zip(p, q)) * temperature**2
    assert softmax_kl(s, t, y, temperature=temperature).item() == pytest.approx(kl_total / 2, rel=1e-5)
    assert softmax_ce(s, t, y, temperature=temperature).item() == pytest.approx(ce_total / 2, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_softmax_kl_is_ce_minus_teacher_entropy(temperature):
    s, t, y = tensors()
    entropy = 0.0
    for t_row in TEACHER:
        p = py_softmax([x / temperature for x in t_row])
        entropy += -sum(pi * math.log(pi) for pi in p)
    entropy /= 2
    kl = softmax_kl(s, t, y, temperature=temperature).item()
    ce = softmax_ce(s, t, y, temperature=temperature).item()
    assert kl == pytest.approx(ce - temperature**2 * entropy, rel=1e-5)
    # Same gradient w.r.t. the student.
    s1, t1, _ = tensors()
    s2, t2, _ = tensors()
    softmax_kl(s1, t1, y, temperature=temperature).backward()
    softmax_ce(s2, t2, y, temperature=temperature).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_rankdistil_by_hand():
    s, t, y = tensors(student=[STUDENT[0]], teacher=[TEACHER[0]], labels=[LABELS[0]])
    # teacher order: 0 (3.0) > 2 (1.0) > 1 (0.0) > 3 (-2.0); s = [2, 1, 0.5, -1]
    from_0 = [logistic(2 - 1), logistic(2 - 0.5), logistic(2 + 1)]  # (0,1), (0,2), (0,3)
    from_2 = [logistic(0.5 - 1), logistic(0.5 + 1)]  # (2,1), (2,3)
    from_1 = [logistic(1 + 1)]  # (1,3)
    assert rankdistil_pairwise(s, t, y).item() == pytest.approx(sum(from_0 + from_2 + from_1) / 6, rel=1e-6)
    assert rankdistil_pairwise(s, t, y, top_k=1).item() == pytest.approx(sum(from_0) / 3, rel=1e-6)
    assert rankdistil_pairwise(s, t, y, top_k=2).item() == pytest.approx(sum(from_0 + from_2) / 5, rel=1e-6)
    assert rankdistil_pairwise(s, t, y, top_k=10).item() == pytest.approx(
        sum(from_0 + from_2 + from_1) / 6, rel=1e-6
    )


def test_rankdistil_teacher_ties_are_not_pairs():
    s, t, y = tensors(student=[[0.0, 1.0, 3.0]], teacher=[[1.0, 1.0, 0.0]], labels=[[True, False, False]])
    expected = (logistic(0.0 - 3.0) + logistic(1.0 - 3.0)) / 2  # pairs (0,2), (1,2) only
    assert rankdistil_pairwise(s, t, y).item() == pytest.approx(expected, rel=1e-6)


def test_m3se_by_hand():
    s, t, y = tensors()
    # q1: negatives {1,2,3} with teacher scores 0, 1, -2 -> j* = 2 (s_j* = 0.5, t_j* = 1).
    q1_margin = ((3 - 1) - (2 - 0.5)) ** 2  # i = 0
    q1_hinge = max(1 - 0.5, 0) ** 2 + max(0.5 - 0.5, 0) ** 2 + max(-1 - 0.5, 0) ** 2
    # q2: negatives {0,3} with teacher scores 1, 2.5 -> j* = 3 (s_j* = 2, t_j* = 2.5).
    q2_margin = ((2 - 2.5) - (3 - 2)) ** 2 + ((-1 - 2.5) - (1 - 2)) ** 2
    q2_hinge = max(0 - 2, 0) ** 2 + max(2 - 2, 0) ** 2
    q1, q2 = q1_margin + q1_hinge, q2_margin + q2_hinge
    assert (q1, q2) == (pytest.approx(0.5), pytest.approx(8.5))
    assert m3se(s, t, y).item() == pytest.approx((q1 + q2) / 2)


def test_m3se_uses_teacher_hardest_negative_not_students():
    # Teacher's hardest negative is index 2; the student's is index 1.
    s, t, y = tensors(student=[[2.0, 1.5, 0.0]], teacher=[[2.0, 0.0, 1.0]], labels=[[True, False, False]])
    teacher_star = ((2 - 1) - (2 - 0)) ** 2 + max(1.5 - 0, 0) ** 2 + 0.0  # j* = 2 -> 1 + 2.25
    student_star = ((2 - 0) - (2 - 1.5)) ** 2 + 0.0 + max(0 - 1.5, 0) ** 2  # j = 1 -> 2.25
    assert teacher_star != pytest.approx(student_star)
    assert m3se(s, t, y).item() == pytest.approx(teacher_star)


def test_m3se_hinge_term_zero_when_student_negatives_below_star():
    # j* = 1 (teacher 1.0); student negatives 0.2 and -3 are below s_j* = 0.5.
    labels = [[True, False, False, False]]
    s, t, y = tensors(student=[[1.0, 0.5, 0.2, -3.0]], teacher=[[2.0, 1.0, 0.0, 0.5]], labels=labels)
    margin_only = ((2.0 - 1.0) - (1.0 - 0.5)) ** 2
    assert m3se(s, t, y).item() == pytest.approx(margin_only)
    # Pushing a non-j* negative further down changes nothing; raising it above s_j* does.
    s_lower, _, _ = tensors(student=[[1.0, 0.5, -7.0, -3.0]], labels=labels)
    assert m3se(s_lower, t, y).item() == pytest.approx(margin_only)
    s_higher, _, _ = tensors(student=[[1.0, 0.5, 0.9, -3.0]], labels=labels)
    assert m3se(s_higher, t, y).item() == pytest.approx(margin_only + (0.9 - 0.5) ** 2)


def test_m3se_sums_inside_a_query():
    # Two positives with the same error: a sum gives twice the single-positive value.
    s1, t1, y1 = tensors(student=[[1.0, 0.0]], teacher=[[2.0, 0.0]], labels=[[True, False]])
    s2, t2, y2 = tensors(student=[[1.0, 1.0, 0.0]], teacher=[[2.0, 2.0, 0.0]], labels=[[True, True, False]])
    assert m3se(s1, t1, y1).item() == pytest.approx(1.0)
    assert m3se(s2, t2, y2).item() == pytest.approx(2.0)


# ---------------------------------------------------------------- independent reference


def reference(name: str, s: list[float], t: list[float], y: list[bool], v: list[bool], hp: dict) -> float | None:
    """Plain-Python per-query value, or None when the query is skipped."""
    idx = [i for i in range(len(s)) if v[i]]
    pos = [i for i in idx if y[i]]
    neg = [i for i in idx if not y[i]]
    if name == "one_hot_ce":
        if not pos:
            return None
        tau = hp.get("temperature", 1.0)
        lse = math.log(sum(math.exp(s[i] / tau) for i in idx))
        return -sum(s[i] / tau - lse for i in pos) / len(pos)
    if name == "mse":
        return sum((s[i] - t[i]) ** 2 for i in idx) / len(idx) if idx else None
    if name == "margin_mse":
        pairs = [((s[i] - s[j]) - (t[i] - t[j])) ** 2 for i in pos for j in neg]
        return sum(pairs) / len(pairs) if pairs else None
    if name in ("kl", "softmax_ce"):
        if len(idx) < 2:
            return None
        temp = hp.get("temperature", 1.0)
        p = py_softmax([t[i] / temp for i in idx])
        q = py_softmax([s[i] / temp for i in idx])
        if name == "kl":
            return temp**2 * sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
        return -(temp**2) * sum(a * math.log(b) for a, b in zip(p, q))
    if name == "rankdistil":
        by_teacher = sorted(idx, key=lambda i: -t[i])
        k = hp.get("top_k") or len(idx)
        anchors = by_teacher[:k]
        pairs = [logistic(s[i] - s[j]) for i in anchors for j in idx if t[i] > t[j]]
        return sum(pairs) / len(pairs) if pairs else None
    if name == "m3se":
        if not pos or not neg:
            return None
        star = max(neg, key=lambda j: t[j])
        return sum(((t[i] - t[star]) - (s[i] - s[star])) ** 2 for i in pos) + sum(
            max(s[j] - s[star], 0.0) ** 2 for j in neg
        )
    raise AssertionError(name)


HYPERPARAMETERS = {"one_hot_ce": {"temperature": 0.7}, "kl": {"temperature": 2.0}, "rankdistil": {"top_k": 3}}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_matches_plain_python_reference_with_padding(name):
    rng = random.Random(1234)
    batch, width = 6, 7
    s = [[round(rng.uniform(-3, 3), 3) for _ in range(width)] for _ in range(batch)]
    t = [[round(rng.uniform(-3, 3), 3) for _ in range(width)] for _ in range(batch)]
    y = [[rng.random() < 0.3 for _ in range(width)] for _ in range(batch)]
    v = [[rng.random() < 0.8 for _ in range(width)] for _ in range(batch)]
    v[0] = [False] * width  # fully padded query
    y[1] = [False] * width  # no positive
    y[2] = [True] * width  # no negative
    hp = HYPERPARAMETERS.get(name, {})
    values = [reference(name, s[b], t[b], y[b], v[b], hp) for b in range(batch)]
    kept = [x for x in values if x is not None]
    expected = sum(kept) / len(kept)
    got = ALL_LOSSES[name](
        torch.tensor(s), torch.tensor(t), torch.tensor(y), torch.tensor(v), **hp
    ).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- masking


def padded(fill_student: float, fill_teacher: float, fill_label: bool):
    """STUDENT/TEACHER/LABELS with two garbage padding columns and a fully padded third query."""
    s = [row + [fill_student, fill_student] for row in STUDENT] + [[9.0] * 6]
    t = [row + [fill_teacher, fill_teacher] for row in TEACHER] + [[-9.0] * 6]
    y = [row + [fill_label, fill_label] for row in LABELS] + [[True, False] * 3]
    mask = [[True] * 4 + [False] * 2] * 2 + [[False] * 6]
    return (*tensors(s, t, y), torch.tensor(mask))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
@pytest.mark.parametrize(
    "fill", [(100.0, -100.0, True), (float("-inf"), float("inf"), False), (float("nan"), float("nan"), True)]
)
def test_padding_changes_nothing(name, fill):
    loss = ALL_LOSSES[name]
    s, t, y = tensors()
    loss(s, t, y).backward()
    ps, pt, py, mask = padded(*fill)
    value = loss(ps, pt, py, mask)
    value.backward()
    assert value.item() == pytest.approx(loss(*tensors()).item(), rel=1e-6)
    assert torch.isfinite(ps.grad).all()
    torch.testing.assert_close(ps.grad[:2, :4], s.grad)
    assert (ps.grad[:, 4:] == 0).all() and (ps.grad[2] == 0).all()


def test_one_hot_ce_with_in_batch_negative_columns():
    # Query 1 sees the other query's positive as an extra negative; a padded slot is ignored.
    s = torch.tensor([[2.0, 0.0, 1.0, 5.0], [1.0, 3.0, 0.0, 5.0]], requires_grad=True)
    y = torch.tensor([[True, False, False, False], [False, True, False, False]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    q1 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.0)))
    q2 = -(3.0 - math.log(math.exp(1.0) + math.exp(3.0) + math.exp(0.0)))
    assert one_hot_ce(s, None, y, mask).item() == pytest.approx((q1 + q2) / 2, rel=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_no_usable_query_gives_zero_with_graph(name):
    s, t, _ = tensors()
    value = ALL_LOSSES[name](s, t, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


# ---------------------------------------------------------------- dtypes, sizes, gradients


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_smallest_batch_b1_n2(name):
    s = torch.tensor([[0.3, 1.2]], requires_grad=True)
    t = torch.tensor([[2.0, -1.0]])
    y = torch.tensor([[True, False]])
    value = ALL_LOSSES[name](s, t, y)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_bf16_inputs_computed_in_float32(name):
    s32, t32, y = tensors()
    s16 = s32.detach().to(torch.bfloat16).requires_grad_(True)
    t16 = t32.to(torch.bfloat16)
    value = ALL_LOSSES[name](s16, t16, y)
    value.backward()
    assert value.dtype == torch.float32
    assert s16.grad is not None and s16.grad.dtype == torch.bfloat16
    # All the example's numbers are exact in bf16, so the value must match float32.
    assert value.item() == pytest.approx(ALL_LOSSES[name](s32, t32, y).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["mse", "margin_mse", "kl", "m3se"])
def test_zero_when_student_equals_teacher(name):
    s, t, y = tensors(student=TEACHER)
    assert ALL_LOSSES[name](s, t, y).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(DISTILLATION_LOSSES))
def test_gradient_reaches_student_only(name):
    s, t, y = tensors()
    t.requires_grad_(True)
    DISTILLATION_LOSSES[name](s, t, y).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_large_logits_are_stable():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0]])
    y = torch.tensor([[True, False, False]])
    for name, loss in ALL_LOSSES.items():
        value = loss(s, t, y, torch.tensor([[True, True, False]]))
        value.backward()
        assert torch.isfinite(value), name
        assert torch.isfinite(s.grad).all(), name
        s.grad = None


# ---------------------------------------------------------------- registry and input errors


def test_registry_names():
    assert set(DISTILLATION_LOSSES) == {"mse", "margin_mse", "kl", "softmax_ce", "rankdistil", "m3se"}
    assert "one_hot_ce" not in DISTILLATION_LOSSES
    assert get_distillation_loss("m3se") is m3se
    assert get_distillation_loss("kl") is softmax_kl


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_distillation_loss("one_hot_ce")
    for name in DISTILLATION_LOSSES:
        assert name in str(err.value)


def test_registry_binds_and_checks_hyperparameters():
    s, t, y = tensors()
    bound = get_distillation_loss("kl", temperature=2.0)
    assert bound(s, t, y).item() == pytest.approx(softmax_kl(s, t, y, temperature=2.0).item())
    with pytest.raises(ValueError, match="temperature"):
        get_distillation_loss("mse", temperature=2.0)
    with pytest.raises(ValueError, match="top_k"):
        get_distillation_loss("rankdistil", k=3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, t, y: margin_mse(s, None, y), "teacher"),
        (lambda s, t, y: m3se(s, t[:, :3], y), "teacher"),
        (lambda s, t, y: pointwise_mse(s, t, y.float()), "labels"),
        (lambda s, t, y: softmax_kl(s, t, y, torch.ones(2, 4)), "mask"),
        (lambda s, t, y: softmax_kl(s, t, y, temperature=0.0), "temperature"),
        (lambda s, t, y: one_hot_ce(s, labels=y, temperature=-1.0), "temperature"),
        (lambda s, t, y: rankdistil_pairwise(s, t, y, top_k=0), "top_k"),
        (lambda s, t, y: one_hot_ce(s[0], labels=y), "student"),
        (lambda s, t, y: one_hot_ce(s), "labels"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    s, t, y = tensors()
    with pytest.raises(ValueError, match=message):
        call(s, t, y)


def test_integer_grades_are_labels():
    s, t, y = tensors()
    grades = torch.tensor([[2, 0, 0, 0], [0, 1, 3, 0]])
    assert m3se(s, t, grades).item() == pytest.approx(m3se(s, t, y).item())


# ---------------------------------------------------------------------------------------------------------------
# in-batch softmax distillation


def test_in_batch_softmax_kl_by_hand():
    from rankers.losses import in_batch_softmax_kl

    # two queries, four in-batch passages; query 0 owns columns 0-1, query 1 owns 2-3; column 1 of query 1 masked
    student = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.0, 1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 9.0, 9.0], [9.0, 9.0, 0.0, 1.0]])  # off-support entries must not matter
    support = torch.tensor([[True, True, False, False], [False, False, True, True]])
    mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    total = 0.0
    for s_row, t_row, own, valid in zip(student.tolist(), teacher.tolist(), support.tolist(), mask.tolist()):
        p = py_softmax([t for t, o in zip(t_row, own) if o])
        z = sum(math.exp(s) for s, v in zip(s_row, valid) if v)
        q = [math.exp(s) / z for s, o in zip(s_row, own) if o]
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert in_batch_softmax_kl(student, teacher, support, mask).item() == pytest.approx(total / 2, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_in_batch_softmax_kl_is_softmax_kl_without_other_passages(temperature):
    from rankers.losses import in_batch_softmax_kl

    s, t, y = tensors()
    own = torch.ones_like(y, dtype=torch.bool)
    expected = softmax_kl(s, t, y, temperature=temperature)
    assert in_batch_softmax_kl(s, t, own, own, temperature=temperature).item() == pytest.approx(expected.item())


def test_in_batch_softmax_kl_with_one_hot_teacher_is_the_in_batch_label_loss():
    from rankers.losses import in_batch_softmax_kl

    student = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.0, 1.0, 3.0]], requires_grad=True)
    support = torch.tensor([[True, True, False, False], [False, False, True, True]])
    positive = torch.tensor([[True, False, False, False], [False, False, False, True]])
    teacher = torch.where(positive, torch.tensor(60.0), torch.tensor(0.0))  # softmax is one-hot to 1e-26
    mask = torch.ones_like(support)
    got = in_batch_softmax_kl(student, teacher, support, mask)
    torch.testing.assert_close(got, one_hot_ce(student, None, positive, mask))
    got.backward()
    assert student.grad[0, 2] > 0 and student.grad[1, 0] > 0  # the other query's passages are pushed down


def test_in_batch_softmax_kl_rejects_a_misshaped_support():
    from rankers.losses import in_batch_softmax_kl

    s, t, y = tensors()
    with pytest.raises(ValueError, match="in_batch_softmax_kl: `support` must have the student's shape"):
        in_batch_softmax_kl(s, t, y[:, :2], torch.ones_like(y, dtype=torch.bool))
