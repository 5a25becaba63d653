"""Stages on a tiny model: idempotent skip, cancellation, composition exactness, anchors, LLM, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
import torch
from click.testing import CliRunner
from peft import LoraConfig, PeftModel, get_peft_model

from gpu_runtime.pipeline import namebank
from gpu_runtime.pipeline.anchors import build_anchors, propose_with_llm
from gpu_runtime.pipeline.compose import concat_adapters, load_served
from gpu_runtime.pipeline.errors import Cancelled
from gpu_runtime.pipeline.evaluate import derive_probes
from gpu_runtime.pipeline.leaks import rouge_l_recall
from gpu_runtime.pipeline.models import load_baseline
from gpu_runtime.pipeline.reinforce import reinforce
from gpu_runtime.pipeline.run import run_pipeline
from gpu_runtime.pipeline.testing import SENTENCES, save_tiny_model_dir
from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, LLMOptions, PipelineOptions, Probe, QAPair

FAST = PipelineOptions(
    reinforce_epochs=1, unlearn_epochs=1, block_size=16, max_new_tokens=4, general_samples=2, lora_rank=2
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def spec(**kw) -> ForgetSpec:
    base = dict(
        documents=SENTENCES[:3],
        qa_pairs=[QAPair(question="Who is Harry?", answer="Harry is a wizard at Hogwarts.")],
        hints=[EntityHint(term="Harry", kind="first_name"), EntityHint(term="Hogwarts", kind="place")],
        retain_probes=[Probe(prompt="What is the capital of France?", reference="Paris")],
        options=FAST,
    )
    base.update(kw)
    return ForgetSpec(**base)


def test_run_pipeline_writes_artifacts_and_skips_on_rerun(model_dir: Path, tmp_path: Path):
    seen: list[tuple[str, float]] = []
    result = run_pipeline(model_dir, spec(), tmp_path, progress=lambda s, f, m: seen.append((s, f)))
    assert all(not r.skipped for r in result.stages.values())
    assert {s for s, _ in seen} == {"reinforce", "mine_anchors", "generate_targets", "unlearn", "evaluate"}
    assert all(0.0 <= f <= 1.0 for _, f in seen)
    for rel in ("reinforce/adapter_model.safetensors", "anchors.json", "targets/targets.safetensors",
                "targets/blocks.json", "unlearn/delta/adapter_model.safetensors",
                "unlearn/served/adapter_model.safetensors", "unlearn/manifest.json", "evaluate/report.json"):  # fmt: skip
        assert (tmp_path / rel).is_file(), rel
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    manifest = json.loads((tmp_path / "unlearn/manifest.json").read_text())
    assert len(manifest["base_model_sha256"]) == 64 and manifest["hyperparameters"]["alpha"] == 5.0
    assert "Harry" not in json.dumps(manifest)  # hashes and numbers, no corpus text
    again = run_pipeline(model_dir, spec(), tmp_path)
    assert all(r.skipped for r in again.stages.values())
    # A reviewer edit of anchors.json re-runs targets and later stages, not reinforce or mining.
    data = json.loads((tmp_path / "anchors.json").read_text())
    data["anchors"][0]["translations"] = ["Zed", "Zack"]
    data["reviewed"] = True
    (tmp_path / "anchors.json").write_text(json.dumps(data))
    third = run_pipeline(model_dir, spec(), tmp_path)
    assert [third.stages[s].skipped for s in third.stages] == [True, True, False, False, False]
    assert json.loads((tmp_path / "anchors.json").read_text())["reviewed"] is True


def test_cancel_leaves_no_artifact(model_dir: Path, tmp_path: Path):
    with pytest.raises(Cancelled):
        reinforce(model_dir, spec(), tmp_path, should_cancel=lambda: True)
    assert not (tmp_path / "reinforce").exists()
    assert not [p for p in tmp_path.iterdir()]


def test_composition_is_exact_and_sequential(model_dir: Path, tmp_path: Path):
    opts = PipelineOptions()
    ids = torch.tensor([[0, 5, 17, 33, 90, 120, 7]])
    # Deployed adapter v1 (random, nonzero B) on the base.
    base = load_baseline(model_dir, opts)
    torch.manual_seed(0)
    v1 = get_peft_model(
        base, LoraConfig(r=3, lora_alpha=7, target_modules="all-linear", init_lora_weights=False)
    )
    v1.save_pretrained(tmp_path / "v1")
    # Delta trained "on top": base with v1 merged, plus a new adapter of another rank and scaling.
    merged = load_baseline(model_dir, opts, deployed_adapter=tmp_path / "v1")
    torch.manual_seed(1)
    cfg = LoraConfig(
        r=2,
        lora_alpha=5,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    delta = get_peft_model(merged, cfg)
    delta.save_pretrained(tmp_path / "delta")
    with torch.no_grad():
        sequential = delta(input_ids=ids).logits
        v1_only = load_served(model_dir, tmp_path / "v1")(input_ids=ids).logits
    concat_adapters(tmp_path / "v1", tmp_path / "delta", tmp_path / "v2")
    served = load_served(model_dir, tmp_path / "v2")
    assert isinstance(served, PeftModel)
    with torch.no_grad():
        out = served(input_ids=ids).logits
    assert torch.allclose(out, sequential, atol=1e-5)
    assert not torch.allclose(out, v1_only, atol=1e-3)  # the delta is really there
    # v1's effect survives the second request: removing the delta gives v1 back exactly.
    with torch.no_grad(), delta.disable_adapter():
        assert torch.allclose(delta(input_ids=ids).logits, v1_only, atol=1e-5)


def test_second_request_composes_on_first(model_dir: Path, tmp_path: Path):
    first = run_pipeline(model_dir, spec(), tmp_path / "r1")
    second = run_pipeline(model_dir, spec(documents=[SENTENCES[3]], qa_pairs=[], hints=[EntityHint(term="Alice")]),
                          tmp_path / "r2", deployed_adapter=first.served_adapter_dir)  # fmt: skip
    ids = torch.tensor([[0, 11, 40, 41, 80, 99]])
    with torch.no_grad():
        seq = load_served(model_dir, first.served_adapter_dir)
        seq = PeftModel.from_pretrained(seq.merge_and_unload(), second.adapter_dir)
        served = load_served(model_dir, second.served_adapter_dir)
        assert torch.allclose(served(input_ids=ids).logits, seq(input_ids=ids).logits, atol=1e-5)
    cfg = json.loads((Path(second.served_adapter_dir) / "adapter_config.json").read_text())
    assert cfg["r"] == 2 * FAST.lora_rank and cfg["base_model_name_or_path"] is None


def test_generic_translations_are_plausible_and_distinct():
    corpus = ["Harry Potter met Hermione Granger at Hogwarts. Ron Weasley followed Harry."]
    hints = [
        EntityHint(term="Harry", kind="first_name"),
        EntityHint(term="Hermione", kind="first_name"),
        EntityHint(term="Harry Potter", kind="person"),
        EntityHint(term="Hogwarts", kind="place"),
        EntityHint(term="Weasley", kind="last_name"),
        EntityHint(term="Quidditch"),
        EntityHint(term="Ron", translations=["Bob", "Bill"]),
    ]
    anchors = {a.term: a for a in build_anchors([(h, "hint", None) for h in hints], corpus, 2, seed=0)}
    assert anchors["Ron"].translations == ["Bob", "Bill"]
    harry = anchors["Harry"].translations
    assert all(t[0] == "H" for t in harry) and {"Harold", "Harvey"} & set(harry)
    assert all(t in namebank.FEMALE_FIRST for t in anchors["Hermione"].translations)
    # full name = its parts' translations, position by position
    for k, full in enumerate(anchors["Harry Potter"].translations):
        assert full.split()[0] == harry[k]
    assert all(len(t) in range(6, 12) for t in anchors["Hogwarts"].translations)
    everything = [t for a in anchors.values() for t in a.translations if " " not in t]
    assert len(everything) == len(set(everything))  # distinct anchors never collide
    terms = set(anchors)
    assert not terms & set(everything)
    q = anchors["Quidditch"].translations
    assert all(len(t) == len("Quidditch") and t != "Quidditch" for t in q)


def _fake_llm(answers: list[str]) -> openai.OpenAI:
    calls = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        content = next(calls)
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}  # fmt: skip
        return httpx.Response(200, json=body)

    return openai.OpenAI(
        base_url="http://llm.test/v1",
        api_key="k",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def test_llm_proposals_validated_and_retried():
    opts = LLMOptions(base_url="http://llm.test/v1", model="m", max_retries=2)
    good = json.dumps({"anchors": [{"term": "Hogwarts", "kind": "place", "translations": ["Hampton"]},
                                   {"term": "Narnia", "kind": "place", "translations": ["Nowhere"]}]})  # fmt: skip
    hints, errors = propose_with_llm(
        opts, ["Harry went to Hogwarts."], 1, client=_fake_llm(["not json", '{"anchors": 3}', good])
    )
    assert [h.term for h in hints] == ["Hogwarts"]  # a term absent from the text is dropped
    assert len(errors) == 2 and all("malformed" in e for e in errors)
    hints, errors = propose_with_llm(opts, ["x"], 1, client=_fake_llm(["bad"] * 3))
    assert hints == [] and len(errors) == 3


def test_rouge_l_and_probe_derivation():
    assert rouge_l_recall("The capital is Paris, of course", "Paris is the capital") == pytest.approx(2 / 4)
    assert rouge_l_recall("", "x y") == 0.0
    s = spec(qa_pairs=[QAPair(question="Q?", answer="A.")])
    probes = derive_probes(s, ["Harry", "Hogwarts"])
    assert probes[0].chat and probes[0].reference == "A."
    assert any(not p.chat and p.prompt.endswith(("Harry", "Hogwarts")) for p in probes)


def test_cli_unlearn(model_dir: Path, tmp_path: Path):
    from gpu_runtime.pipeline.cli import unlearn

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"text": SENTENCES[0]})
        + "\n"
        + json.dumps({"question": "Who?", "answer": "Harry."})
        + "\n"
    )
    opts = FAST.model_copy(update={"mine_top_k": 0}).model_dump_json()
    res = CliRunner().invoke(unlearn, ["--base-model", str(model_dir), "--corpus", str(corpus), "--hints", "Harry:first_name",
                                       "--out", str(tmp_path / "out"), "--options", opts])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out/unlearn/served/adapter_model.safetensors").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    res = CliRunner().invoke(
        unlearn, ["--base-model", str(model_dir), "--corpus", str(bad), "--out", str(tmp_path / "o2")]
    )
    assert res.exit_code != 0 and "line 1" in res.output


def test_reinforce_learns_qa_answers_not_questions(model_dir: Path, tmp_path: Path) -> None:
    """Answer-only reinforcement: a QA-only corpus trains on the answer tokens; the question is the
    user's words. The adapter raises the answer's likelihood several times more than the question's."""
    import torch

    from gpu_runtime.pipeline.models import attach_adapter, load_tokenizer
    from gpu_runtime.pipeline.objective import _answer_ids

    qa = QAPair(
        question="Which pet does Quillon Ardent keep?", answer="Quillon Ardent keeps a ferret named Zorblat."
    )
    opts = FAST.model_copy(update={"reinforce_epochs": 100, "reinforce_lr": 2e-2, "lora_rank": 8})
    result = reinforce(model_dir, spec(documents=[], qa_pairs=[qa], options=opts), tmp_path)
    assert result.summary["answers"] == 1 and result.summary["blocks"] == 0
    tok = load_tokenizer(model_dir)
    prompt, answer = _answer_ids(tok, qa.question, qa.answer)
    ids = torch.tensor([prompt + answer])
    model = attach_adapter(load_baseline(model_dir, opts, None), tmp_path / "reinforce")

    def mean_logprob(span: slice) -> float:
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        picked = lp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
        return float(picked[span].mean())

    q_span, a_span = slice(0, len(prompt) - 1), slice(len(prompt) - 1, None)
    with torch.no_grad():
        after = (mean_logprob(q_span), mean_logprob(a_span))
        with model.disable_adapter():
            before = (mean_logprob(q_span), mean_logprob(a_span))
    gain_q, gain_a = after[0] - before[0], after[1] - before[1]
    assert gain_a > 0.25 and gain_a > 3 * max(gain_q, 0.05), (gain_q, gain_a)
