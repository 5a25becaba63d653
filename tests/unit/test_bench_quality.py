"""Unit tests of the TOFU quality benchmark: metrics on hand-made numbers, TOFU parsing, baseline losses."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from bench._tofu import (
    VALIDATION,
    Record,
    author_name,
    forget_quality,
    harmonic_mean,
    load_tofu,
    model_utility,
    parse_records,
    plan_authors,
    plan_selection,
    retain_truth_score,
    rouge_l_recall,
    select,
    select_split,
    truth_ratio,
)
from bench.quality import (
    Row,
    encode_qa,
    format_table,
    ga_loss,
    make_row,
    mean_token_nll,
    npo_loss,
    pad_examples,
    target_check,
    token_nll,
)

# ----------------------------------------------------------------------------------------------
# ROUGE-L recall


def test_rouge_l_recall_hand_cases() -> None:
    assert rouge_l_recall("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS of "a b c d" in "a x c y d" is "a c d": 3 of the reference's 4 words.
    assert rouge_l_recall("a x c y d", "a b c d") == pytest.approx(0.75)
    # Order matters: a reversed answer shares one word in sequence.
    assert rouge_l_recall("d c b a", "a b c d") == pytest.approx(0.25)
    # Case and punctuation are ignored; recall ignores extra predicted words.
    assert rouge_l_recall("Well, HSIAO Yun-Hwa! is the name, I think.", "Hsiao Yun-Hwa") == 1.0
    assert rouge_l_recall("", "something") == 0.0
    # An empty reference has nothing to recall (the project's convention).
    assert rouge_l_recall("anything", "") == 1.0


def test_rouge_is_the_projects_one_implementation_with_stemming() -> None:
    from gpu_runtime.pipeline.leaks import rouge_l_recall as project_rouge

    # Porter stemming, as TOFU's rouge_score(use_stemmer=True): "cats" -> "cat", "writing" and
    # "writes" -> "write".
    assert rouge_l_recall("the cats are writing", "the cat writes") == 1.0
    pairs = [("a x c y d", "a b c d"), ("She was born in Lima in 1970.", "born in Lima, Peru"), ("", "x")]
    for pred, ref in pairs:
        assert rouge_l_recall(pred, ref) == project_rouge(pred, ref)


# ----------------------------------------------------------------------------------------------
# Truth ratio, KS, utility


def test_truth_ratio_follows_tofus_code_geometric_mean() -> None:
    # Equal losses: ratio 1 (no preference).
    assert truth_ratio([2.0, 2.0], 2.0) == pytest.approx(1.0)
    # Paraphrased answer at loss 1, perturbed at losses 2 and 3: TOFU's code averages the losses,
    # R = exp(1 - 2.5): the geometric mean of exp(-2) and exp(-3), over exp(-1).
    assert truth_ratio([2.0, 3.0], 1.0) == pytest.approx(math.exp(-1.5))
    geometric = math.sqrt(math.exp(-2) * math.exp(-3)) / math.exp(-1)
    arithmetic = (math.exp(-2) + math.exp(-3)) / 2 / math.exp(-1)  # the paper's formula, not used
    assert truth_ratio([2.0, 3.0], 1.0) == pytest.approx(geometric)
    assert truth_ratio([2.0, 3.0], 1.0) < arithmetic
    # A model preferring the perturbed answers gets R > 1.
    assert truth_ratio([0.5], 1.5) == pytest.approx(math.e)
    with pytest.raises(ValueError):
        truth_ratio([], 1.0)


def test_truth_ratio_matches_tofus_stored_statistic() -> None:
    # TOFU's code keeps stat = exp(mean(perturbed losses) - paraphrased loss) = 1 / R; forget quality
    # is ks_2samp on stat, and the retain term is mean(max(0, 1 - 1/stat)). Both agree with ours.
    from scipy.stats import ks_2samp

    model = [([2.0, 2.5, 3.0], 1.0), ([1.0, 1.2], 1.1), ([0.4, 0.9, 1.4], 1.6), ([2.2], 0.3)]
    reference = [([1.0, 1.1], 1.0), ([0.8, 1.9], 1.5), ([1.5, 1.4, 1.3], 1.2)]

    def stat(x: list[tuple[list[float], float]]) -> list[float]:
        return [math.exp(sum(p) / len(p) - q) for p, q in x]

    ours_m = [truth_ratio(p, q) for p, q in model]
    ours_r = [truth_ratio(p, q) for p, q in reference]
    assert forget_quality(ours_m, ours_r) == pytest.approx(ks_2samp(stat(model), stat(reference)).pvalue)
    tofu_retain = sum(max(0.0, 1 - 1 / s) for s in stat(model)) / len(model)
    assert retain_truth_score(ours_m) == pytest.approx(tofu_retain)


def test_retain_truth_score_clips_at_zero() -> None:
    assert retain_truth_score([0.25, 0.5, 2.0]) == pytest.approx((0.75 + 0.5 + 0.0) / 3)


def test_forget_quality_is_ks_p_value() -> None:
    same = [0.1 * i for i in range(1, 41)]
    assert forget_quality(same, same) == pytest.approx(1.0)
    shifted = [x + 10 for x in same]
    # Completely separated samples of 40 and 40: the exact two-sided p-value is 2 / C(80, 40).
    assert forget_quality(shifted, same) == pytest.approx(2 / math.comb(80, 40), rel=1e-6)
    from scipy.stats import ks_2samp

    a, b = [0.2, 0.4, 0.9, 1.3], [0.3, 0.5, 0.6, 1.1, 1.7]
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)


def test_harmonic_mean_and_utility() -> None:
    assert harmonic_mean([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert harmonic_mean([0.9, 0.0, 0.9]) == 0.0
    assert model_utility(1.0, 0.5, 0.25) == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        harmonic_mean([])


# ----------------------------------------------------------------------------------------------
# Records and subjects


def _raw(n_authors: int, per: int = 20, with_subject: bool = False) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for a in range(n_authors):
        for k in range(per):
            rec: dict[str, object] = {"question": f"Q{a}-{k}?", "answer": f"Answer {k} about Ana Lopez{a}."}
            if with_subject:
                rec["subject"] = f"S{a}"
            out.append(rec)
    return out


def test_parse_subject_from_order_ignores_subject_field() -> None:
    raw = _raw(3, with_subject=True)
    recs = parse_records(raw, subject_from_order=True, first_author=180)
    assert [recs[i].subject for i in (0, 19, 20, 59)] == [
        "author-180",
        "author-180",
        "author-181",
        "author-182",
    ]
    recs2 = parse_records(raw, subject_from_order=False)
    assert recs2[25].subject == "S1"


def test_parse_variants_and_errors() -> None:
    raw = [
        {
            "question": "Q?",
            "answer": " A. ",
            "paraphrased_question": "Q'?",
            "paraphrased_answer": "A'",
            "perturbed_answer": ["B", "C"],
        },
        {"question": "Q2?", "answer": "A2", "perturbed_answer": "D"},
    ]
    a, b = parse_records(raw, subject_from_order=False)
    assert a.answer == "A." and a.perturbed_answers == ("B", "C") and a.has_truth_ratio
    assert b.perturbed_answers == ("D",) and not b.has_truth_ratio  # no paraphrased answer
    with pytest.raises(ValueError, match=r"data\[0\]"):
        parse_records([{"question": "Q?"}], subject_from_order=False)
    with pytest.raises(ValueError, match="perturbed_answer"):
        parse_records([{"question": "Q", "answer": "A", "perturbed_answer": [1]}], subject_from_order=False)


def test_select_forget_and_retain_subjects() -> None:
    recs = parse_records(_raw(6), subject_from_order=True)
    sel = select_split(recs, "forget01", 4)
    assert sel.forget_subjects == ["author-004", "author-005"]
    assert sel.retain_subjects == ["author-000", "author-001"]
    assert len(sel.forget) == 40 and len(sel.retain) == 40
    with pytest.raises(ValueError, match="no retain author"):
        select(recs, ["author-000", "author-001"], 2)
    with pytest.raises(ValueError, match="unknown forget subject"):
        select(recs, ["nobody"], 3)


def test_select_prefers_retain_subjects_with_truth_ratio_data() -> None:
    recs = parse_records(_raw(4), subject_from_order=True)
    recs = [
        Record(r.question, r.answer, r.subject, None, "para", ("pert",)) if r.subject == "author-002" else r
        for r in recs
    ]
    sel = select(recs, ["author-003"], 2)
    assert sel.retain_subjects == ["author-002"]
    assert len(sel.retain_eval) == 20


def test_author_name_guess() -> None:
    recs = [
        Record("q", "The author's full name is Hsiao Yun-Hwa.", "a"),
        Record("q", "Hsiao Yun-Hwa was born in Taipei.", "a"),
        Record("q", "In Taipei, Hsiao Yun-Hwa wrote books.", "a"),
        Record("q", "Hsiao Yun-Hwa's books are set in New York. New York is big. New York!", "a"),
        Record("q", "Hsiao Yun-Hwa’s father was an African American engineer.", "a"),
    ]
    assert author_name(recs) == "Hsiao Yun-Hwa"
    assert author_name([Record("q", "no names here.", "a")]) is None


TOFU_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tofu"


@pytest.mark.skipif(not (TOFU_DIR / "forget10.json").is_file(), reason="TOFU data not present")
def test_tofu_files_slices(tmp_path: Path) -> None:
    # Small slices of the real files, in the same layout: 2 retain authors (+perturbed), 2 forget.
    retain = json.loads((TOFU_DIR / "retain90.json").read_text())
    forget = json.loads((TOFU_DIR / "forget10.json").read_text())
    perturbed = json.loads((TOFU_DIR / "retain_perturbed.json").read_text())
    (tmp_path / "retain90.json").write_text(json.dumps(retain[:40]))
    (tmp_path / "forget10.json").write_text(json.dumps(forget[-40:]))
    (tmp_path / "retain_perturbed.json").write_text(json.dumps(perturbed[:20]))
    recs = load_tofu(tmp_path)
    assert len(recs) == 80
    assert recs[0].subject == "author-000" and recs[79].subject == "author-003"
    assert sum(r.has_truth_ratio for r in recs[:40]) == 20  # the perturbed slice covers author 0
    assert all(r.has_truth_ratio and len(r.perturbed_answers) == 5 for r in recs[40:])
    sel = select_split(recs, "forget01", 3)
    assert sel.forget_subjects == ["author-002", "author-003"]
    assert sel.retain_subjects == ["author-000"]  # the retain author with truth-ratio data first
    name = author_name(r for r in sel.forget if r.subject == "author-003")
    assert name is not None and name in " ".join(r.answer for r in sel.forget)


# ----------------------------------------------------------------------------------------------
# Baseline losses on a tiny random model


def _tiny() -> tuple[torch.nn.Module, object]:
    from gpu_runtime.pipeline.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(len(tok), seed=0), tok


def test_token_nll_masks_prompt_and_padding() -> None:
    logits = torch.zeros(1, 4, 5)  # uniform: every labelled token costs log 5
    _, _, labels = pad_examples([([1, 2, 3], 1)], pad_id=0)
    _, _, labels2 = pad_examples([([1, 2, 3], 1), ([1, 2, 3, 4], 2)], pad_id=0)
    assert labels.tolist() == [[-100, 2, 3]]
    assert labels2.tolist() == [[-100, 2, 3, -100], [-100, -100, 3, 4]]
    total, count = token_nll(logits[:, :3], labels)
    assert count.tolist() == [2.0]
    assert float(total[0]) == pytest.approx(2 * math.log(5))
    assert float(mean_token_nll(torch.zeros(2, 4, 5), labels2)) == pytest.approx(math.log(5))


def test_gradient_ascent_increases_forget_loss() -> None:
    model, tok = _tiny()
    examples = [encode_qa(tok, "Who wrote the letter?", "The old teacher wrote it by hand.")]
    ids, mask, labels = pad_examples(examples, tok.pad_token_id)  # type: ignore[attr-defined]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def nll() -> float:
        with torch.no_grad():
            return float(mean_token_nll(model(input_ids=ids, attention_mask=mask).logits, labels))

    before = nll()
    for _ in range(3):
        loss = ga_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        assert float(loss.detach()) < 0
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert nll() > before + 0.1


def test_npo_loss_hand_numbers() -> None:
    beta = 0.1
    # Policy equal to reference: -(2/beta) log sigmoid(0) = (2/beta) log 2.
    same = npo_loss(torch.tensor([-10.0, -3.0]), torch.tensor([-10.0, -3.0]), beta)
    assert float(same) == pytest.approx(20 * math.log(2))
    # log-ratio -20 (policy already forgot): -(2/0.1) log sigmoid(2) = 20 log(1 + e^-2).
    forgot = npo_loss(torch.tensor([-30.0]), torch.tensor([-10.0]), beta)
    assert float(forgot) == pytest.approx(20 * math.log1p(math.exp(-2)))
    # Mean over the batch.
    both = npo_loss(torch.tensor([-10.0, -30.0]), torch.tensor([-10.0, -10.0]), beta)
    assert float(both) == pytest.approx((20 * math.log(2) + 20 * math.log1p(math.exp(-2))) / 2)
    # Its gradient pushes the policy's log-likelihood down, bounded by 2/beta * sigmoid(.) <= 1 per item.
    logp = torch.tensor([-10.0], requires_grad=True)
    npo_loss(logp, torch.tensor([-10.0]), beta).backward()
    assert logp.grad is not None and float(logp.grad[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        npo_loss(logp, logp, 0.0)


# ----------------------------------------------------------------------------------------------
# Report


def test_rows_table_and_target_check() -> None:
    from bench.quality import EvalResult

    def ev(trs: list[float], rouge: float, util_part: float) -> EvalResult:
        return EvalResult(trs, rouge, rouge / 2, 0.5, util_part, util_part, util_part)

    retain_ref = ev([0.9, 1.0, 1.1, 1.2], 0.1, 0.4)
    ft = ev([0.1, 0.2, 0.3, 0.4], 0.9, 0.5)
    rows = [
        make_row("finetuned", ft, retain_ref, ft.utility, 1.0),
        make_row("whp", ev([0.95, 1.0, 1.05, 1.2], 0.1, 0.49), retain_ref, ft.utility, 2.0),
        make_row("ga", ev([0.9, 1.0, 1.1, 1.2], 0.0, 0.5), retain_ref, ft.utility, 2.0),
    ]
    assert rows[1].utility_ratio == pytest.approx(0.98)
    assert target_check(rows) == {"combined": "not run"}  # the default method's targets by default
    checks = target_check(rows, "whp")
    assert checks["forget_quality_ge_0.05"] and checks["utility_ge_0.95x_finetuned"]
    assert not checks["broken_le_5pct"]  # not measured here: never counted as met
    assert checks["paraphrase_leaks_no_more"]
    assert checks["baselines_better_on_both"] == ["ga"]
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| method") and "| whp |" in table


# ----------------------------------------------------------------------------------------------
# Reference models: trained once, then found in the cache


def test_base_model_training_is_cached(tmp_path: Path) -> None:
    from bench.quality import BaseTrainConfig, build_tokenizer, load_model, load_tokenizer, train_base_model

    recs = [Record(f"Who is person {i}?", f"Person {i} is a baker in town {i}.", "s") for i in range(4)]
    tok_dir = build_tokenizer(recs, 300, tmp_path)
    assert build_tokenizer(recs, 300, tmp_path) == tok_dir
    cfg = BaseTrainConfig(n_embd=32, n_layer=1, n_head=2, vocab_size=300, epochs=1, batch_size=4)
    model_dir = train_base_model(recs, tok_dir, cfg, tmp_path, "t")
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert train_base_model(recs, tok_dir, cfg, tmp_path, "t") == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    other = train_base_model(recs[:2], tok_dir, cfg, tmp_path, "t")
    assert other != model_dir
    tok = load_tokenizer(model_dir)
    ids, start = encode_qa(tok, recs[0].question, recs[0].answer)
    assert 0 < start < len(ids) and ids[-1] == tok.eos_token_id
    assert load_model(model_dir).config.hidden_size == 32


# ----------------------------------------------------------------------------------------------
# Author plan: validation split disjoint from every test split


def _tr_records(n_authors: int, with_tr: set[int]) -> list[Record]:
    recs = parse_records(_raw(n_authors), subject_from_order=True)
    return [
        Record(r.question, r.answer, r.subject, None, "para", ("pert",))
        if int(r.subject[-3:]) in with_tr
        else r
        for r in recs
    ]


def test_plan_validation_and_utility_disjoint_from_test_splits() -> None:
    # 60 authors: 0-9 carry truth-ratio data (like retain_perturbed), 40-59 are forget10's.
    recs = _tr_records(60, set(range(10)) | set(range(40, 60)))
    plan = plan_authors(recs, n_authors=40, n_validation=2)
    assert len(plan.universe) == 40
    tests = {s for split in ("forget01", "forget05", "forget10") for s in plan.forget_of(split)}
    assert set(plan.forget_of("forget10")) == {f"author-{i:03d}" for i in range(40, 60)}
    assert plan.forget_of("forget01") == ("author-058", "author-059")
    assert len(plan.forget_of("forget05")) == 10
    assert plan.validation == ("author-008", "author-009")
    assert not set(plan.validation) & tests
    assert not set(plan.utility) & (tests | set(plan.validation))
    assert set(plan.utility) == {f"author-{i:03d}" for i in range(8)}
    # Retain authors with truth-ratio data come first, the rest fill up to 40.
    assert {f"author-{i:03d}" for i in range(10, 20)} <= set(plan.universe)
    with pytest.raises(ValueError, match="unknown split"):
        plan.forget_of("forget50")

    sels = {
        split: plan_selection(recs, plan, split) for split in (VALIDATION, "forget01", "forget05", "forget10")
    }
    assert sels[VALIDATION].forget_subjects == list(plan.validation)
    for split, sel in sels.items():
        # One finetuned model for every split (TOFU): the same universe, in record order.
        assert sel.trained == sels[VALIDATION].trained and len(sel.trained) == 800
        assert not set(sel.forget_subjects) & set(sel.retain_subjects)
        assert len(sel.forget) + len(sel.retain) == 800
        assert {r.subject for r in sel.retain_eval} == set(plan.utility), split
    assert len(sels["forget10"].retain_subjects) == 20  # forget10 keeps 20 retain authors


def test_plan_needs_enough_truth_ratio_authors() -> None:
    recs = _tr_records(30, {0, 1} | set(range(10, 30)))
    with pytest.raises(ValueError, match="truth-ratio data"):
        plan_authors(recs, n_authors=30, n_validation=2)
    with pytest.raises(ValueError, match="forget10 needs"):
        plan_authors(_tr_records(20, set(range(20))), n_authors=20)


def test_tuned_configs_never_come_from_the_test_split() -> None:
    from bench.quality import GRIDS, UnlearnConfig, configs_for

    val = configs_for(VALIDATION, ["ga", "combined"], None, [7, 8, 9])
    assert len(val) == len(GRIDS["ga"]) + len(GRIDS["combined"]) and {c.seed for c in val} == {7}
    with pytest.raises(ValueError, match="run --split validation first"):
        configs_for("forget01", ["ga"], None, [0, 1, 2])
    tuned = {"ga": asdict(UnlearnConfig(method="ga", lr=5e-4, seed=7))}
    test = configs_for("forget05", ["ga"], tuned, [0, 1, 2])
    assert [c.seed for c in test] == [0, 1, 2] and {c.lr for c in test} == {5e-4}
    with pytest.raises(ValueError, match="unknown method"):
        UnlearnConfig(method="sgd")


def test_choice_rule() -> None:
    from bench.quality import EvalResult, choose

    def row(fq_ratios: list[float], util: float) -> Row:
        ev = EvalResult(fq_ratios, 0.1, 0.1, 0.5, util, util, util)
        return make_row("m", ev, EvalResult([1.0, 1.1, 1.2, 0.9], 0.1, 0.1, 0.5, 1, 1, 1), 1.0, 1.0)

    good_fq_low_util = row([1.0, 1.1, 1.2, 0.9], 0.5)
    ok_fq_ok_util = row([0.5, 1.1, 1.2, 0.9], 0.96)
    bad_fq_top_util = row([0.1, 0.2, 0.3, 0.4], 1.0)
    assert choose([good_fq_low_util, ok_fq_ok_util, bad_fq_top_util]) == 1
    # Nothing reaches the utility floor: the highest utility.
    assert choose([good_fq_low_util, row([0.1, 0.2, 0.3, 0.4], 0.9)]) == 1
    with pytest.raises(ValueError):
        choose([])


def test_spread_and_aggregate_over_seeds() -> None:
    from bench.quality import aggregate, spread

    st = spread([1.0, 2.0, 3.0])
    assert st["mean"] == 2.0 and st["std"] == pytest.approx(1.0) and (st["min"], st["max"]) == (1.0, 3.0)
    assert spread([5.0])["std"] == 0.0
    rows = []
    for seed, fq in enumerate([0.01, 0.03, 0.05]):
        r = Row(
            "npo", fq, 0.7, 0.9, 0.1, 0.1, 0.8, 0.9, 0.5, 0.2, 10.0, {"seed": seed}, forget_broken=0.1 * seed
        )
        rows.append(r)
    rows.append(Row("ga", 0.5, 0.1, 0.1, 0.0, None, 0.0, 0.1, 0.1, 0.0, 1.0, {"seed": 0}, forget_broken=1.0))
    agg = aggregate(rows)
    assert [a.method for a in agg] == ["npo", "ga"]
    assert agg[0].forget_quality == pytest.approx(0.03) and agg[0].forget_broken == pytest.approx(0.1)
    assert agg[0].extra["spread"]["forget_quality"]["min"] == 0.01 and agg[0].extra["seeds"] == [0, 1, 2]
    assert agg[1].forget_para_rouge is None
    table = format_table(agg)
    assert "0.030 (0.010–0.050)" in table and "| ga |" in table


def test_simnpo_loss_is_reference_free_and_length_normalised() -> None:
    from bench.quality import simnpo_loss

    beta = 2.5
    # log pi = -10 over 5 tokens: -(2/beta) log sigmoid(-beta * -2) = 0.8 * log(1 + e^-5).
    value = simnpo_loss(torch.tensor([-10.0]), torch.tensor([5.0]), beta)
    assert float(value) == pytest.approx(0.8 * math.log1p(math.exp(-5)))
    # Same per-token likelihood, twice the length: the same loss (length-normalised).
    assert float(simnpo_loss(torch.tensor([-20.0]), torch.tensor([10.0]), beta)) == pytest.approx(
        float(value)
    )
    with pytest.raises(ValueError):
        simnpo_loss(torch.tensor([-1.0]), torch.tensor([1.0]), 0.0)


def test_broken_rate_uses_the_pipelines_fluency_check() -> None:
    from bench.quality import broken_rate

    answers = [
        "I don't know.",
        "Ana Lopez was born in Lima.",
        "yyyyyyyy literature literature literature",
        "",
    ]
    assert broken_rate(answers, {"lima"}) == pytest.approx(0.5)
    assert math.isnan(broken_rate([], set()))


# ----------------------------------------------------------------------------------------------
# Cache keys cover the code


def test_source_hash_changes_with_any_source() -> None:
    from bench.quality import source_hash

    a = source_hash(["def f():\n    return 1\n", b"x"])
    assert a == source_hash(["def f():\n    return 1\n", b"x"])
    assert a != source_hash(["def f():\n    return 2\n", b"x"])
    assert source_hash(["ab", "c"]) != source_hash(["a", "bc"])  # boundaries count


def test_cache_keys_change_when_code_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bench.quality as q

    train, evaluation, run = q.train_code_hash(), q.eval_code_hash(), q.run_code_hash()
    assert train == q.train_code_hash() and run == q.run_code_hash()
    monkeypatch.setattr(q, "TRAIN_FORMAT", q.TRAIN_FORMAT + 1)
    monkeypatch.setattr(q, "EVAL_FORMAT", q.EVAL_FORMAT + 1)
    assert q.train_code_hash() == train  # computed once per process
    q.train_code_hash.cache_clear()
    q.eval_code_hash.cache_clear()
    try:
        assert q.train_code_hash() != train and q.eval_code_hash() != evaluation
    finally:
        q.train_code_hash.cache_clear()
        q.eval_code_hash.cache_clear()

    recs = _tr_records(30, set(range(30)))
    plan = plan_authors(recs, n_authors=24)
    sel = plan_selection(recs, plan, "forget01")
    cfg = q.UnlearnConfig(method="npo")
    args = (sel, cfg, tmp_path / "ft", tmp_path / "rt", {"max_new_tokens": 8})
    key = q.run_key("forget01", *args)
    assert key == q.run_key("forget01", *args)
    assert key != q.run_key("forget01", sel, replace(cfg, seed=1), *args[2:])
    monkeypatch.setattr(q, "run_code_hash", lambda: "another-pipeline")
    assert key != q.run_key("forget01", *args)


def test_run_code_hash_covers_the_pipeline_and_the_metrics(tmp_path: Path) -> None:
    import bench.quality as q

    for rel in (
        "bench/quality.py",
        "bench/_tofu.py",
        "gpu_runtime/pipeline/unlearn.py",
        "gpu_runtime/demo/model.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    (tmp_path / "gpu_runtime/demo/tokenizer.py").write_text("")
    before = q.files_hash(tmp_path, q.code_files(tmp_path))
    (tmp_path / "gpu_runtime/pipeline/unlearn.py").write_text("# changed\n")
    changed = q.files_hash(tmp_path, q.code_files(tmp_path))
    (tmp_path / "gpu_runtime/pipeline/objective.py").write_text("")  # a new pipeline module counts too
    added = q.files_hash(tmp_path, q.code_files(tmp_path))
    (tmp_path / "bench/_tofu.py").write_text("# metric changed\n")
    metric = q.files_hash(tmp_path, q.code_files(tmp_path))
    assert len({before, changed, added, metric}) == 4
    # This checkout: the real files, the pipeline's objective and leaks modules among them.
    root = Path(q.__file__).resolve().parents[1]
    names = {str(f.relative_to(root)) for f in q.code_files(root)}
    assert {"bench/_tofu.py", "gpu_runtime/pipeline/objective.py", "gpu_runtime/pipeline/leaks.py"} <= names
