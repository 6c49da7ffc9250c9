"""Tests of the VQA accuracy benchmark (benchmarks/vqa, benchmarks/*vqa*.py, modality_stats.py):
the generator is deterministic and its answers follow from the scene and the pixels, splits are
disjoint, the tokenizer / processor / training batches agree, a tiny LLaVA runs forward, generate
and a save / load round trip, and (slow) a few training steps lower the loss."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.vqa.data import (COLORS, SHAPES, SPLITS, TASKS, TEXT_COLOR, SceneConfig,  # noqa: E402
                                 generate_dialogues, generate_samples, make_question, patch_labels,
                                 render_scene, sample_scene, shape_mask, split_of, vocabulary)
from benchmarks.vqa.evaluate import exact_match_by_task, normalize_answer  # noqa: E402
from benchmarks.vqa.font import GLYPHS, text_mask  # noqa: E402
from benchmarks.vqa.model import (PRESETS, PROMPT_TEMPLATE, VLMPreset, build_model,  # noqa: E402
                                  build_processor, build_tokenizer, pixel_values, training_batch)

MICRO = VLMPreset("micro", SceneConfig(grid=4, cell=8, max_objects=3), vision_hidden=64, vision_layers=1,
                  vision_heads=2, text_hidden=64, text_layers=2, text_heads=2, text_kv_heads=1)
CPU_SCENE = PRESETS["cpu"].scene


def _tiny(preset=MICRO):
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    return build_model(preset, tokenizer).eval(), build_processor(preset, tokenizer), tokenizer


def test_generator_is_deterministic_per_seed():
    a = generate_samples("train", 20, seed=3, cfg=CPU_SCENE)
    b = generate_samples("train", 20, seed=3, cfg=CPU_SCENE)
    c = generate_samples("train", 20, seed=4, cfg=CPU_SCENE)
    assert [(s.question, s.answer, s.scene) for s in a] == [(s.question, s.answer, s.scene) for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.scene for s in a] != [s.scene for s in c]
    assert [s.task for s in a[:10]] == list(TASKS) * 2  # round-robin, balanced


def _expected_answer(scene, task, question):
    """Re-derive the answer from the scene spec, independently of make_question."""
    words = question.split()
    if task == "ocr":
        return scene.text.lower()
    if task == "count":
        return str(sum(o.shape + "s" == words[2] for o in scene.objects))
    if task == "shape":
        return next(o.shape for o in scene.objects if o.color == words[4])
    if task == "color":
        (obj,) = [o for o in scene.objects if o.shape == words[4]]  # the shape must be unique
        return obj.color
    obj = next(o for o in scene.objects if (o.color, o.shape) == (words[2], words[3]))
    if words[4] == "left":
        assert not scene.text_col <= obj.col < scene.text_col + len(scene.text)
        return "left" if obj.col < scene.text_col else "right"
    assert obj.row != scene.text_row
    return "above" if obj.row < scene.text_row else "below"


@pytest.mark.parametrize("split", SPLITS)
def test_answers_follow_from_the_scene(split):
    for sample in generate_samples(split, 100, seed=11, cfg=CPU_SCENE):
        assert sample.answer == _expected_answer(sample.scene, sample.task, sample.question), sample.question


def test_image_pixels_match_the_scene():
    cfg = CPU_SCENE
    for sample in generate_samples("val", 30, seed=5, cfg=cfg):
        scene, img = sample.scene, sample.image.astype(int)
        assert img.shape == (cfg.image_size, cfg.image_size, 3) and sample.image.dtype == np.uint8
        coloured = np.zeros(img.shape[:2], dtype=bool)
        for obj in scene.objects:
            y, x = obj.row * cfg.cell + obj.dy, obj.col * cfg.cell + obj.dx
            cell = img[obj.row * cfg.cell:(obj.row + 1) * cfg.cell, obj.col * cfg.cell:(obj.col + 1) * cfg.cell]
            hit = (cell == COLORS[obj.color]).all(axis=2)
            expected = np.zeros_like(hit)
            expected[obj.dy:obj.dy + obj.size, obj.dx:obj.dx + obj.size] = shape_mask(obj.shape, obj.size)
            assert np.array_equal(hit, expected)
            coloured[y:y + obj.size, x:x + obj.size] = True
        for i, ch in enumerate(scene.text):
            r, c = scene.text_row, scene.text_col + i
            cell = img[r * cfg.cell:(r + 1) * cfg.cell, c * cfg.cell:(c + 1) * cfg.cell]
            ink = (cell == TEXT_COLOR).all(axis=2)
            glyph = text_mask(ch, cfg.font_scale)
            assert ink.sum() == glyph.sum()
            assert np.array_equal(ink[scene.text_dy:scene.text_dy + glyph.shape[0],
                                      scene.text_dx:scene.text_dx + glyph.shape[1]], glyph)
        grey = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2])
        text_colour = (img == TEXT_COLOR).all(axis=2)
        assert (grey | coloured | text_colour).all()  # nothing coloured outside the objects


def test_shape_counts_from_pixels():
    """Count shapes from the image alone (one colour per object) and compare with the answer."""
    cfg = CPU_SCENE
    samples = [s for s in generate_samples("test", 60, seed=2, cfg=cfg) if s.task == "count"]
    assert samples
    for sample in samples:
        present = [name for name, rgb in COLORS.items() if (sample.image == rgb).all(axis=2).any()]
        assert sorted(present) == sorted(o.color for o in sample.scene.objects)
        shape = sample.question.split()[2][:-1]
        assert sample.answer == str(sum(o.shape == shape for o in sample.scene.objects))


def test_splits_are_disjoint():
    keys = {split: {s.scene.key() for s in generate_samples(split, 200, seed=0, cfg=CPU_SCENE)}
            for split in SPLITS}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    for split in SPLITS:
        assert all(split_of(s.scene) == split for s in generate_samples(split, 20, seed=9, cfg=CPU_SCENE))


def test_dialogues_share_one_image_and_never_repeat_a_question():
    dialogues = generate_dialogues("train", 8, seed=1, cfg=CPU_SCENE)
    again = generate_dialogues("train", 8, seed=1, cfg=CPU_SCENE)  # deterministic (VQASample holds arrays:
    assert len(again) == len(dialogues) == 8  # no dataclass ==)
    for a, b in zip(dialogues, again):
        assert [(s.question, s.answer, s.task, s.scene) for s in a] == [(s.question, s.answer, s.task, s.scene) for s in b]
        assert np.array_equal(a[0].image, b[0].image)
    for dialogue in dialogues:
        assert len({s.question for s in dialogue}) == len(dialogue) >= 3
        assert all(s.scene == dialogue[0].scene and s.image is dialogue[0].image for s in dialogue)
        for s in dialogue:
            assert s.answer == _expected_answer(s.scene, s.task, s.question)


def test_patch_labels_mark_objects_and_glyphs():
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, CPU_SCENE)
    labels = patch_labels(scene, CPU_SCENE)
    g = CPU_SCENE.grid
    assert labels.shape == (g * g, 5)
    assert (labels[:, 0] > 0).sum() == len(scene.objects) and (labels[:, 2] > 0).sum() == len(scene.text)
    for obj in scene.objects:
        assert SHAPES[labels[obj.row * g + obj.col, 1] - 1] == obj.shape
    assert np.array_equal(labels[:, 3] * g + labels[:, 4], np.arange(g * g))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_vision_tokens_outnumber_text_tokens(name):
    preset, tokenizer = PRESETS[name], build_tokenizer()
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, preset.scene)
    longest = max(len(tokenizer.encode(make_question(scene, "position", rng)[0] + " answer : left <eos>"))
                  for _ in range(3) if make_question(scene, "position", rng)) if scene.objects else 0
    assert preset.num_image_tokens > max(longest, 18)


def test_tokenizer_round_trips_every_word_and_question():
    tokenizer = build_tokenizer()
    unk = tokenizer.unk_token_id
    for word in vocabulary():
        ids = tokenizer.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != unk and tokenizer.decode(ids) == word
    for s in generate_samples("val", 50, seed=0, cfg=CPU_SCENE):
        ids = tokenizer.encode(f"{s.question} {s.answer}", add_special_tokens=False)
        assert unk not in ids
        assert normalize_answer(tokenizer.decode(ids)) == normalize_answer(f"{s.question} {s.answer}")
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("407", add_special_tokens=False)) == ["4", "0", "7"]
    assert tokenizer.encode("<image>", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("<image>")]


def test_processor_matches_training_batch_and_chat_template():
    _, processor, tokenizer = _tiny(PRESETS["cpu"])
    samples = generate_samples("val", 5, seed=0, cfg=CPU_SCENE)
    from PIL import Image
    out = processor(images=[Image.fromarray(s.image) for s in samples[:1]],
                    text=[PROMPT_TEMPLATE.format(question=samples[0].question)], return_tensors="pt")
    batch = training_batch([[samples[0]]], tokenizer, PRESETS["cpu"].num_image_tokens)
    prompt_len = out["input_ids"].shape[1]
    assert torch.equal(out["input_ids"][0], batch["input_ids"][0, :prompt_len])
    assert torch.equal(out["pixel_values"], pixel_values([samples[0].image]))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": samples[0].question}]}]
    assert processor.apply_chat_template(messages, tokenize=False) == PROMPT_TEMPLATE.format(question=samples[0].question)
    # a two-turn chat renders exactly the training sequence of a two-question dialogue
    second = replace(samples[1], image=samples[0].image)
    messages += [{"role": "assistant", "content": [{"type": "text", "text": samples[0].answer}]},
                 {"role": "user", "content": [{"type": "text", "text": second.question}]},
                 {"role": "assistant", "content": [{"type": "text", "text": second.answer}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    expanded = tokenizer.encode(text.replace("<image>", "<image> " * PRESETS["cpu"].num_image_tokens),
                                add_special_tokens=False)
    assert expanded == training_batch([[samples[0], second]], tokenizer, PRESETS["cpu"].num_image_tokens)["input_ids"][0].tolist()


def test_training_labels_cover_answers_and_optionally_questions():
    tokenizer = build_tokenizer()
    dialogue = generate_dialogues("train", 1, seed=0, cfg=CPU_SCENE)[0]
    n = PRESETS["cpu"].num_image_tokens
    answers_only = training_batch([dialogue], tokenizer, n)
    with_questions = training_batch([dialogue], tokenizer, n, loss_on_questions=True)
    supervised = answers_only["labels"][0][answers_only["labels"][0] != -100]
    expected = sum((tokenizer.encode(s.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
                    for s in dialogue), [])
    assert supervised.tolist() == expected
    assert (with_questions["labels"][0, :n] == -100).all()
    assert torch.equal(with_questions["labels"][0, n:], with_questions["input_ids"][0, n:])


def test_tiny_model_forward_generate_and_save_load(tmp_path):
    model, processor, tokenizer = _tiny()
    samples = generate_samples("val", 4, seed=0, cfg=MICRO.scene)
    batch = training_batch([[s] for s in samples], tokenizer, MICRO.num_image_tokens)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["input_ids"].shape
    from benchmarks.vqa.evaluate import predict
    predictions = predict(model, processor, samples, max_new_tokens=3)
    assert len(predictions) == 4 and all(isinstance(p, str) for p in predictions)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert predict(loaded, loaded_processor, samples, max_new_tokens=3) == predictions


def test_exact_match_scoring():
    samples = generate_samples("test", 10, seed=0, cfg=CPU_SCENE)
    predictions = [s.answer.upper() if i % 2 else "wrong" for i, s in enumerate(samples)]
    predictions[1] = " ".join(samples[1].answer)  # "4 0 7" == "407"
    table = exact_match_by_task(samples, predictions)
    assert table["all"]["correct"] == 5 and table["all"]["total"] == 10
    assert sum(r["total"] for k, r in table.items() if k != "all") == 10
    with pytest.raises(ValueError, match="predictions"):
        exact_match_by_task(samples, predictions[:3])


def test_modality_stats_on_tiny_model():
    from benchmarks.modality_stats import collect_modality_stats
    model, _, tokenizer = _tiny()
    samples = generate_samples("val", 6, seed=0, cfg=MICRO.scene)
    batch = training_batch([[s] for s in samples], tokenizer, MICRO.num_image_tokens)
    rows = collect_modality_stats(model, batch, tokenizer.convert_tokens_to_ids("<image>"))
    assert len(rows) == MICRO.text_layers
    for i, row in enumerate(rows):
        for modality in ("vision", "text"):
            stats = row[modality]
            assert stats["output"]["S"] > 0 and stats["input"]["absmax"] > 0
            assert np.isfinite(stats["grad_in_abs_mean"]) and stats["grad_in_abs_mean"] > 0
            # nothing after the last layer reads its vision positions, which carry no label
            last_vision = i == len(rows) - 1 and modality == "vision"
            assert (stats["grad_abs_mean"] == 0) if last_vision else stats["grad_abs_mean"] > 0
        if i:  # layer i's input is layer i-1's output: the same tensor, the same gradient
            assert row["vision"]["grad_in_abs_mean"] == rows[i - 1]["vision"]["grad_abs_mean"]
    assert all(p.grad is None for p in model.parameters())  # left clean


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="split"):
        generate_samples("dev", 1, seed=0)
    with pytest.raises(ValueError, match="tasks"):
        generate_samples("train", 1, seed=0, tasks=("vqa",))
    with pytest.raises(ValueError, match="num_samples"):
        generate_samples("train", -1, seed=0)
    with pytest.raises(ValueError, match="font_scale"):
        SceneConfig(cell=8, font_scale=2)
    with pytest.raises(ValueError, match="text"):
        text_mask("a?", 1)
    with pytest.raises(ValueError, match="shape"):
        shape_mask("hexagon", 5)
    assert set(GLYPHS) >= set("0123456789")


CHECKPOINT = ROOT / "benchmarks" / "checkpoints" / "vqa-cpu"


@pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="no committed vqa-cpu checkpoint")
def test_committed_cpu_checkpoint_answers_the_test_split():
    from benchmarks.eval_vqa import evaluate_vqa, load
    model, processor = load(CHECKPOINT)
    result = evaluate_vqa(model, processor, num_samples=200)
    assert result["per_task"]["all"]["accuracy"] >= 0.9, result["per_task"]


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss():
    from benchmarks.train_vqa_vlm import TrainConfig, train
    cfg = TrainConfig(steps=40, batch_size=16, lr=2e-3, warmup_steps=5, log_every=5)
    logs = []
    _, _, history, stopped = train(MICRO, cfg, seed=0, device=torch.device("cpu"), log=logs.append)
    assert not stopped and len(history) == 8 and len(logs) == 8
    first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-2:]])
    assert last < 0.7 * first, [h["loss"] for h in history]
    assert history[-1]["probe_loss"] < history[0]["probe_loss"]


# ------------------------------------------------- quantization accuracy benchmark (vqa_quant_accuracy.py)

# Test-only preset: every Linear K a multiple of 128 (so W3A16 / W4A16 groups apply), one layer per tower.
QUANT_TINY = VLMPreset("quant-tiny", SceneConfig(grid=4, cell=8, max_objects=3), vision_hidden=128,
                       vision_layers=1, vision_heads=2, text_hidden=128, text_layers=1, text_heads=2,
                       text_kv_heads=1, mlp_ratio=2)
QUANT_ARGS = ["--samples", "10", "--calib-samples", "3", "--kl-samples", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight QUANT_TINY LLaVA saved as train_vqa_vlm.py saves one (train_summary.json
    carries the scene geometry, since the preset is not in PRESETS)."""
    import json
    from dataclasses import asdict
    model, processor, _ = _tiny(QUANT_TINY)
    path = tmp_path_factory.mktemp("vqa-quant-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "train_summary.json").write_text(json.dumps({"preset": asdict(QUANT_TINY)}))
    return path


def test_calibration_dialogue_renders_the_training_sequence():
    from benchmarks.vqa_quant_accuracy import dialogue_samples
    model, processor, tokenizer = _tiny(QUANT_TINY)
    (sample,) = dialogue_samples(processor, model, "train", 1, seed=5, scene=QUANT_TINY.scene)
    (dialogue,) = generate_dialogues("train", 1, seed=5, cfg=QUANT_TINY.scene)
    batch = training_batch([dialogue], tokenizer, QUANT_TINY.num_image_tokens, loss_on_questions=True)
    assert torch.equal(sample.input_ids, batch["input_ids"])
    assert torch.equal(sample.inputs["pixel_values"], batch["pixel_values"])
    # labels: every token after the first question's "answer :" (answers, later questions, <eos>)
    first_prompt = QUANT_TINY.num_image_tokens + len(tokenizer.encode(
        PROMPT_TEMPLATE.format(question=dialogue[0].question).replace("<image>", ""), add_special_tokens=False))
    assert (sample.labels[0, :first_prompt] == -100).all()
    assert torch.equal(sample.labels[0, first_prompt:], batch["labels"][0, first_prompt:])


def test_skip_reasons_follow_the_calibrator():
    from benchmarks.vqa.quant_table import FORMAT_SETTINGS
    from benchmarks.vqa_quant_accuracy import skip_reason
    from modaq.calib.config import METHODS
    skipped = {(m, s) for m in METHODS for s, setting in FORMAT_SETTINGS.items() if skip_reason(m, setting)}
    assert skipped == {(m, s) for m in ("smoothquant", "flatquant") for s in ("w3a16", "w4a16")}
    assert "calibrator rejects" in skip_reason("flatquant", FORMAT_SETTINGS["w4a16"])
    assert "activation" in skip_reason("smoothquant", FORMAT_SETTINGS["w3a16"])


def _read(path):
    import json
    return json.loads(path.read_text())


def test_quant_accuracy_end_to_end_records_failures_and_merges(tiny_checkpoint, tmp_path, monkeypatch, one_thread):
    import benchmarks.vqa_quant_accuracy as bench
    real_quantize = bench.quantize

    def quantize_failing_w3(model, processor, config, data, **kw):
        if config.format == "w3a16":
            raise RuntimeError("injected failure")
        return real_quantize(model, processor, config, data, **kw)

    scored = []  # modaq modules in each model the benchmark scores: FP first, then the quantized ones

    def evaluate_counting(model, *a, **kw):
        from modaq.api import quant_layers
        scored.append(len(quant_layers(model)))
        return real_evaluate(model, *a, **kw)

    real_evaluate = bench.evaluate
    monkeypatch.setattr(bench, "quantize", quantize_failing_w3)
    monkeypatch.setattr(bench, "evaluate", evaluate_counting)
    part0, part1 = tmp_path / "part0.json", tmp_path / "part1.json"
    assert bench.main(["--model", str(tiny_checkpoint), *QUANT_ARGS, "--methods", "rtn", "--formats", "w4a8",
                       "w3a16", "w4a8-vit-w8a8", "--out-json", str(part0)]) == 0
    first = _read(part0)
    fp_acc = first["fp"]["per_task"]["all"]["accuracy"]
    rows = {r["setting"]: r for r in first["rows"]}
    assert [r["setting"] for r in first["rows"]] == ["w4a8", "w3a16", "w4a8-vit-w8a8"]
    assert rows["w3a16"]["status"] == "error" and "injected failure" in rows["w3a16"]["reason"]
    from benchmarks.vqa.quant_table import markdown
    assert "| error: RuntimeError: injected failure |" in markdown(first["header"], first["fp"], first["rows"])
    for name in ("w4a8", "w4a8-vit-w8a8"):  # the failure did not stop the run
        row = rows[name]
        assert row["status"] == "ok" and row["per_task"]["all"]["total"] == 10
        assert sum(v["total"] for k, v in row["per_task"].items() if k != "all") == 10
        assert row["delta_vs_fp"] == pytest.approx(row["per_task"]["all"]["accuracy"] - fp_acc)
        assert np.isfinite(row["kl_text"]) and row["kl_text"] > 0  # quantization changed the logits
        assert row["errors"]["vision"] > 0 and row["errors"]["language_text"] > 0 and row["calib_seconds"] > 0
    n_linears = 6 * QUANT_TINY.vision_layers + 2 + 7 * QUANT_TINY.text_layers  # ViT + projector + decoder
    assert scored == [0, n_linears, n_linears]  # FP, rtn x w4a8, rtn x w4a8-vit-w8a8 (w3a16 failed)
    assert rows["w4a8-vit-w8a8"]["config"]["vision_format"] == "w8a8"
    assert rows["w4a8-vit-w8a8"]["errors"]["vision"] < rows["w4a8"]["errors"]["vision"]  # W8A8 ViT is finer

    monkeypatch.setattr(bench, "quantize", real_quantize)
    assert bench.main(["--model", str(tiny_checkpoint), *QUANT_ARGS, "--methods", "rtn", "smoothquant",
                       "--formats", "w3a16", "--out-json", str(part1)]) == 0
    second = {r["method"]: r for r in _read(part1)["rows"]}
    assert second["rtn"]["status"] == "ok" and second["smoothquant"]["status"] == "skipped"

    out = tmp_path / "results"
    assert bench.main(["--merge", str(part1), str(part0), "--name", "t", "--results-dir", str(out)]) == 0
    merged = _read(out / "vqa_quant_accuracy_t.json")
    order = [(r["method"], r["setting"], r["status"]) for r in merged["rows"]]
    assert order == [("rtn", "w3a16", "ok"), ("rtn", "w4a8", "ok"), ("rtn", "w4a8-vit-w8a8", "ok"),
                     ("smoothquant", "w3a16", "skipped")]  # the ok rtn x w3a16 row replaced the failed one
    assert merged["header"]["parts"] == 2 and any("twice" in n for n in merged["notes"])
    table = (out / "vqa_quant_accuracy_t.md").read_text()
    assert table.count("\n| rtn |") == 3 and "skipped: SmoothQuant" in table and "| fp | - |" in table


def test_merge_refuses_partials_of_different_settings(tmp_path):
    import json
    from benchmarks.vqa_quant_accuracy import main
    fp = {"method": "fp", "setting": "-", "status": "ok", "per_task": {"all": {"correct": 1, "total": 2,
                                                                              "accuracy": 0.5}}}
    header = {"model": "m", "samples": 10, "test_seed": 1, "calib_samples": 4, "calib_seed": 0}
    for i, samples in enumerate((10, 20)):
        (tmp_path / f"p{i}.json").write_text(json.dumps({"header": {**header, "samples": samples}, "fp": fp,
                                                         "rows": []}))
    with pytest.raises(ValueError, match="samples"):
        main(["--merge", str(tmp_path / "p0.json"), str(tmp_path / "p1.json"), "--results-dir", str(tmp_path)])
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="partial"):
        main(["--merge", str(tmp_path / "bad.json"), "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--set", "gptq_damp", "--merge", str(tmp_path / "p0.json")])  # KEY=VALUE expected


def test_modality_stats_script_writes_results(tiny_checkpoint, tmp_path):
    import json
    from benchmarks.modality_stats import main
    assert main(["--model", str(tiny_checkpoint), "--samples", "4", "--name", "t", "--threads", "0",
                 "--results-dir", str(tmp_path)]) == 0
    (layer,) = json.loads((tmp_path / "modality_stats_t.json").read_text())["layers"]
    # the last layer's output feeds only the text positions' logits: zero gradient on vision tokens
    assert layer["vision"]["grad_abs_mean"] == 0 and layer["text"]["grad_abs_mean"] > 0
    assert layer["vision"]["grad_in_abs_mean"] > 0 and layer["text"]["grad_in_abs_mean"] > 0
    assert "| 0 |" in (tmp_path / "modality_stats_t.md").read_text()


def test_rotation_ablation_assembles_variants_from_partials(tmp_path):
    """vqa_rotation_ablation maps each partial's QuantConfig overrides to its Table-2 variant and
    keeps only the requested setting's ok rows, in the variants' order."""
    import json
    from benchmarks.vqa_rotation_ablation import main, variant_of

    assert variant_of("flatquant", {"language_calibration": "text"}) == "text-only"
    assert variant_of("quarot", {"modality": "mbq"}).startswith("weighted")
    assert variant_of("quarot", {"beta": 0.5}) is None
    acc = lambda a: {t: {"correct": 1, "total": 1, "accuracy": a} for t in (*TASKS, "all")}  # noqa: E731
    header = {"model": "m", "samples": 10, "test_seed": 1, "calib_samples": 4, "calib_seed": 0, "kl_samples": 2,
              "device": "cpu", "torch": "t"}
    fp = {"method": "fp", "setting": "-", "status": "ok", "per_task": acc(1.0)}

    def row(method, a, setting="w4a4", status="ok"):
        return {"method": method, "setting": setting, "status": status, "per_task": acc(a), "kl_text": 1 - a,
                "errors": {"language_text": 0.1, "language_vision": None}}
    parts = {"default": ({}, [row("quarot", 0.9), row("flatquant", 0.95), row("rtn", 0.5)]),
             "text": ({"language_calibration": "text"}, [row("flatquant", 0.8), row("flatquant", 0.1, "w4a8")]),
             "mbq": ({"modality": "mbq"}, [row("quarot", 0.97), row("quarot", 0.2, status="error")])}
    for name, (overrides, rows) in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"header": {**header, "overrides": overrides},
                                                           "fp": fp, "rows": rows}))
    assert main(["--partials", *(str(tmp_path / f"{n}.json") for n in parts), "--name", "t",
                 "--results-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "vqa_rotation_ablation_t.json").read_text())
    assert [(r["method"], r["variant"], r["per_task"]["all"]["accuracy"]) for r in data["rows"]] == [
        ("flatquant", "text-only", 0.8), ("flatquant", "weighted (scale ratio)", 0.95),
        ("quarot", "multimodal", 0.9), ("quarot", "weighted (MBQ gradients: MBQ(Rot))", 0.97)]
    table = (tmp_path / "vqa_rotation_ablation_t.md").read_text()
    assert "| flatquant | text-only |" in table and "| -20.0 |" in table


@pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="no committed vqa-cpu checkpoint")
def test_quantized_checkpoint_saves_loads_and_answers_the_same(tmp_path, one_thread):
    """Quantize the trained model, save it with modaq, load it back through eval_vqa.load: the
    same greedy answers as the in-memory quantized model (the user's quantize -> save -> evaluate)."""
    from benchmarks.eval_vqa import load, scene_for
    from benchmarks.vqa.evaluate import evaluate
    from benchmarks.vqa_quant_accuracy import dialogue_samples
    from modaq import api
    from modaq.calib import QuantConfig

    model, processor = load(CHECKPOINT)
    scene = scene_for(model, CHECKPOINT)
    calib = dialogue_samples(processor, model, "train", 4, 0, scene)
    quantized = api.quantize(model, processor, QuantConfig(method="rtn", format="w4a4", samples=4, device="cpu",
                                                           progress=False), calib)
    test = generate_samples("test", 40, 7, scene)
    before = evaluate(quantized, processor, test)["predictions"]
    api.save_quantized(quantized, tmp_path / "q", processor)
    loaded, loaded_processor = load(tmp_path / "q")
    assert sum(isinstance(m, torch.nn.Linear) for m in loaded.modules()) <= 1  # only lm_head stays FP
    assert evaluate(loaded, loaded_processor, test)["predictions"] == before
