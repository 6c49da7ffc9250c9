"""Calibration data: sources, chat-template rendering, SFT labels, visual-token budget, errors."""
import json

import pytest
import torch
from PIL import Image

from modaq.calib.data import build_samples, load_calibration, parse_spec, synthetic_pairs
from modaq.calib.tiny import tiny_vlm


@pytest.fixture(scope="module")
def qwen():
    return tiny_vlm("qwen2_vl")


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (60 + 10 * i, 70), (i * 80, 40, 200)).save(d / f"{i}.jpg")
    return d


def _answer_tokens(sample, processor):
    ids = sample.input_ids[0][sample.labels[0] != -100]
    return processor.tokenizer.decode(ids)


def test_synthetic_samples_label_only_the_answer(qwen):
    model, processor = qwen
    samples = load_calibration("synthetic", processor, 3)
    pairs = synthetic_pairs(3)
    assert len(samples) == 3
    for sample, pair in zip(samples, pairs):
        assert sample.labels.shape == sample.input_ids.shape
        answer = _answer_tokens(sample, processor)
        assert answer.split()[: len(pair.answer.split())] == pair.answer.split()
        image = sample.input_ids == model.config.image_token_id
        assert image.any() and (sample.labels[image] == -100).all()
    assert len(load_calibration("synthetic:5", processor, 128)) == 5


def test_coco_sharegpt_jsonl_sources(qwen, tmp_path, image_dir):
    _, processor = qwen
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
            "annotations": [{"image_id": i, "caption": f"a {c} square"} for i, c in enumerate(["red", "blue", "green"])]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    share = [{"image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is this ?"},
                                                  {"from": "gpt", "value": "a blue square"}]}]
    (tmp_path / "share.json").write_text(json.dumps(share))
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "images/2.jpg", "text": "a green square"}) + "\n")
    coco_samples = load_calibration(f"coco:{tmp_path}/coco.json,{image_dir}", processor, 2)
    assert len(coco_samples) == 2
    [s] = load_calibration(f"sharegpt4v:{tmp_path}/share.json,{image_dir}", processor, 8)
    assert _answer_tokens(s, processor).startswith("a blue square")
    [s] = load_calibration(f"jsonl:{tmp_path}/data.jsonl", processor, 8)
    assert _answer_tokens(s, processor).startswith("a green square")


def test_missing_and_bad_files_are_named(qwen, tmp_path, image_dir):
    _, processor = qwen
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_spec(f"coco:{tmp_path}/nope.json,{image_dir}", 4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        parse_spec(f"coco:{tmp_path}/bad.json,{image_dir}", 4)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="COCO captions JSON"):
        parse_spec(f"coco:{tmp_path}/list.json,{image_dir}", 4)
    (tmp_path / "x.jsonl").write_text('{"image": "images/missing.jpg", "text": "t"}\n')
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_calibration(f"jsonl:{tmp_path}/x.jsonl", processor, 4)
    (tmp_path / "y.jsonl").write_text('{"text": "t"}\n')
    with pytest.raises(ValueError, match="line 1 needs keys 'image' and 'text'"):
        parse_spec(f"jsonl:{tmp_path}/y.jsonl", 4)
    with pytest.raises(ValueError, match="unknown source 'flickr'"):
        parse_spec("flickr:a,b", 4)
    with pytest.raises(ValueError, match="coco expects FILE,IMAGE_DIR"):
        parse_spec("coco:only_one.json", 4)
    with pytest.raises(ValueError, match="samples: expected a positive int"):
        load_calibration("synthetic", processor, 0)


def test_visual_token_budget_downscales(qwen):
    model, processor = qwen
    token = model.config.image_token_id
    big = [p for p in synthetic_pairs(12) if min(p.image.size) > 150][:2]
    assert big, "the synthetic set should hold large images"
    plain = build_samples(big, processor)
    budget = build_samples(big, processor, visual_token_budget=8, image_token_id=token)
    for a, b in zip(plain, budget):
        assert int((a.input_ids == token).sum()) > 8 >= int((b.input_ids == token).sum()) > 0


def test_visual_token_budget_below_fixed_resolution_is_an_error():
    model, processor = tiny_vlm("llava")  # fixed 56 px input: always 16 visual tokens
    with pytest.raises(ValueError, match="visual_token_budget: 4 is below the 16 visual tokens"):
        build_samples(synthetic_pairs(1), processor, visual_token_budget=4, image_token_id=model.config.image_token_id)


def test_processor_without_chat_template_is_an_error(qwen):
    _, processor = qwen

    class NoTemplate:
        chat_template = None

        def apply_chat_template(self, *a, **k):
            raise AssertionError

    with pytest.raises(ValueError, match="chat template"):
        build_samples(synthetic_pairs(1), NoTemplate())
    assert torch.is_tensor(build_samples(synthetic_pairs(1), processor)[0].labels)
