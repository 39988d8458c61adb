"""Best-of-N decoding (eval.rerank_samples): the usual report plus sampled ones, the one kept is
the candidate the model's image-text score ranks first; repeatable, and off by default."""

import numpy as np
import pytest
import torch

from medvlm.config import EvalConfig
from medvlm.data.images import ImageTransform
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.processing import MedVLMProcessor
from medvlm.tasks import report_generation
from medvlm.tasks.embeddings import text_embeddings
from medvlm.tasks.report_generation import generation_kwargs, reports_for_pixels, training_evaluator
from medvlm.tasks.reranking import Rerank, sampled_candidates
from medvlm.tokenization import train_report_tokenizer
from tests.tiny import tiny_config

REPORTS = ["Small left pleural effusion.", "No pneumothorax. Heart size is normal.", "Unchanged cardiomegaly.",
           "Right basilar atelectasis.", "A 12 mm nodule in the right upper lung."]


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    tokenizer = train_report_tokenizer(REPORTS * 20, tmp_path_factory.mktemp("tok"), vocab_size=60)
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                       eos_token_id=tokenizer.eos_token_id,
                                                       pad_token_id=tokenizer.pad_token_id)).eval()
    return model, MedVLMProcessor(tokenizer, ImageTransform(32), max_length=32)


def _pixels(processor) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return processor.images([rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(3)])


def _score(model, processor, pixels, reports) -> np.ndarray:
    image = model.get_image_features(pixel_values=pixels).detach().numpy()  # (B, E)
    return (image * text_embeddings(model, processor, reports)).sum(-1)


def test_the_kept_report_is_the_best_scored_candidate(model_and_processor):
    model, processor = model_and_processor
    pixels, rerank = _pixels(processor), Rerank(samples=6, temperature=1.0, seed=3)
    greedy = reports_for_pixels(model, processor, pixels, max_new_tokens=8)
    kept = reports_for_pixels(model, processor, pixels, rerank=rerank, max_new_tokens=8)
    decode = lambda **kw: reports_for_pixels(model, processor, pixels, max_new_tokens=8, **kw)  # noqa: E731
    sampled = sampled_candidates(decode, rerank, pixels.device)  # the same seed: the same candidates
    assert len(sampled) == 3 * 6
    for row, report in enumerate(kept):
        candidates = [greedy[row], *sampled[row * 6:(row + 1) * 6]]
        scores = _score(model, processor, pixels[[row] * len(candidates)], candidates)
        assert report in candidates
        assert _score(model, processor, pixels[[row]], [report])[0] == pytest.approx(scores.max(), abs=1e-6)
    assert np.all(_score(model, processor, pixels, kept) >= _score(model, processor, pixels, greedy) - 1e-6)


def test_reranking_is_repeatable_and_leaves_the_global_generator_alone(model_and_processor):
    model, processor = model_and_processor
    pixels, rerank = _pixels(processor), Rerank(samples=4, seed=1)
    torch.manual_seed(123)
    first = reports_for_pixels(model, processor, pixels, rerank=rerank, max_new_tokens=8)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert reports_for_pixels(model, processor, pixels, rerank=rerank, max_new_tokens=8) == first
    assert torch.equal(torch.rand(1), after)


def test_off_by_default_and_not_in_training_evaluations(model_and_processor, monkeypatch):
    assert "rerank" not in generation_kwargs(EvalConfig())
    cfg = EvalConfig(rerank_samples=8, rerank_temperature=0.7, seed=5)
    assert generation_kwargs(cfg)["rerank"] == Rerank(8, 0.7, 5)
    seen = []
    monkeypatch.setattr(report_generation, "generate_reports",
                        lambda model, processor, records, batch_size, **kw: seen.append(kw) or ["x"] * len(records))
    monkeypatch.setattr(report_generation, "score_reports", lambda *a, **k: {"bleu_4": 0.0})
    training_evaluator(model_and_processor[1], cfg)(None, [{"text": "a"}])
    assert seen and "rerank" not in seen[0]


def test_label_consensus_keeps_the_findings_most_samples_state():
    from medvlm.tasks.reranking import label_consensus
    candidates = ["No acute cardiopulmonary abnormality.",  # the usual report, alone in stating nothing
                  "Small left pleural effusion.", "Small right pleural effusion. Mild cardiomegaly.",
                  "There is a small left pleural effusion.", "Right basilar atelectasis."]
    assert label_consensus(candidates) in (1, 3)  # an effusion alone: what most candidates share
    assert label_consensus(["No pneumothorax.", "Clear lungs.", "Small left pleural effusion."]) == 0  # first of equals


def test_label_consensus_reranking_through_reports_for_pixels(model_and_processor):
    model, processor = model_and_processor
    pixels = _pixels(processor)
    kept = reports_for_pixels(model, processor, pixels, rerank=Rerank(4, 1.0, 2, "label_consensus"), max_new_tokens=8)
    assert len(kept) == 3 and all(isinstance(r, str) for r in kept)


def test_reranking_after_prompts_keeps_one_report_per_row(model_and_processor):
    model, processor = model_and_processor  # prompts (a prior's impression) are expanded with the samples
    pixels = _pixels(processor)
    prompts = ["Small left pleural effusion.", "", "Unchanged cardiomegaly."]
    kept = reports_for_pixels(model, processor, pixels, prompts, rerank=Rerank(3, 1.0, 0, "image_text"), max_new_tokens=6)
    decode = lambda **kw: reports_for_pixels(model, processor, pixels, prompts, max_new_tokens=6, **kw)  # noqa: E731
    sampled = sampled_candidates(decode, Rerank(3, 1.0, 0), pixels.device)
    first = reports_for_pixels(model, processor, pixels, prompts, max_new_tokens=6)
    assert len(kept) == 3 and all(kept[i] in [first[i], *sampled[3 * i:3 * i + 3]] for i in range(3))
