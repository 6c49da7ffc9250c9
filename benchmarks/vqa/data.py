"""Procedural, seeded visual question answering (VQA) data: scenes, images, questions, answers.

A scene is a dark board of grid x grid cells (cell = the ViT patch size, as in Sort-of-CLEVR)
holding 1-4 coloured shapes (circle / square / triangle, one per cell, colours unique within a
scene, jittered inside their cell) and one white text string (a 2-3 digit number or a short
word), one 3x5 bitmap-font glyph (`font.py`) per cell along a row. Five task types ask about it,
each with a short exact-match answer:

    ocr       "what is written ?"                                  -> "407" / "cat"
    color     "what color is the triangle ?"  (shape unique)       -> "red"
    shape     "what shape is the blue object ?"                    -> "circle"
    count     "how many squares are there ?"                       -> "0" .. "4"
    position  "is the red circle left or right of the text ?"       -> "left" / "right"
              (or "above or below the text" -> "above" / "below"; only asked when unambiguous)

Splits are disjoint by construction: a scene belongs to the split its content hash selects
(80% train, 10% val, 10% test), and a split only keeps its own scenes. Everything is a pure
function of (split, seed, stream), so train batches can be made on the fly, in any worker.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .font import GLYPHS, text_extent, text_mask

COLORS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 245), "yellow": (240, 220, 40),
    "purple": (170, 60, 220), "cyan": (40, 210, 220), "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("ocr", "color", "shape", "count", "position")
SPLITS = ("train", "val", "test")
OCR_WORDS = (
    "CAT", "DOG", "SUN", "CAR", "BUS", "MAP", "BOX", "PEN", "CUP", "HAT", "KEY", "BAG",
    "EGG", "ICE", "JAM", "OWL", "FOX", "ZIP", "WAX", "QUIZ",
)
TEXT_COLOR = (245, 245, 245)
_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}


@dataclass(frozen=True)
class SceneConfig:
    """Image geometry: a grid x grid board of cell x cell pixel cells (the model's ViT patch size
    equals `cell`). Each shape fills one cell (side cell-2 or cell-1, jittered inside it); the text
    puts one 3x5 glyph (times font_scale) per cell in consecutive cells of one row."""

    grid: int = 6
    cell: int = 8
    font_scale: int = 1
    min_objects: int = 1
    max_objects: int = 4

    @property
    def image_size(self) -> int:
        return self.grid * self.cell

    def __post_init__(self):
        if self.cell < 4 or self.grid < 4:
            raise ValueError(f"cell/grid: expected >= 4, got cell={self.cell}, grid={self.grid}")
        gh, gw = text_extent("0", self.font_scale)
        if gh > self.cell or gw > self.cell:
            raise ValueError(f"font_scale: a {gw}x{gh} glyph does not fit a {self.cell}-pixel cell")
        if not 1 <= self.min_objects <= self.max_objects <= min(len(COLORS), self.grid * (self.grid - 1)):
            raise ValueError("min_objects/max_objects: expected 1 <= min <= max <= number of colours")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int  # grid cell
    col: int
    dy: int  # pixel offset of the shape's box inside its cell
    dx: int
    size: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    text: str
    text_row: int
    text_col: int  # cell of the first glyph; glyph i sits in cell (text_row, text_col + i)
    text_dy: int  # pixel offset of every glyph inside its cell
    text_dx: int
    background: int  # grey level of the board
    noise_seed: int  # seeds the +-6 per-pixel background noise

    def key(self) -> str:
        """Canonical description of the whole scene (what the image is a function of)."""
        objs = ";".join(f"{o.shape},{o.color},{o.row},{o.col},{o.dy},{o.dx},{o.size}" for o in self.objects)
        return (f"{self.text}@{self.text_row},{self.text_col},{self.text_dy},{self.text_dx}"
                f"|{self.background},{self.noise_seed}|{objs}")


@dataclass(frozen=True)
class VQASample:
    image: np.ndarray  # (H, W, 3) uint8
    question: str
    answer: str
    task: str
    scene: Scene


def split_of(scene: Scene) -> str:
    """Which split a scene belongs to, from a hash of its full content (never from the RNG)."""
    bucket = int(hashlib.sha256(scene.key().encode()).hexdigest(), 16) % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def _random_text(rng: np.random.Generator, max_len: int) -> str:
    if rng.random() < 0.5:
        words = [w for w in OCR_WORDS if len(w) <= max_len]
        return words[rng.integers(len(words))]
    return str(rng.integers(10, 1000 if max_len >= 3 else 100))  # 2 or 3 digits


def sample_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """Random scene: text on a random row, shapes in distinct free cells."""
    text = _random_text(rng, cfg.grid)
    row, col = int(rng.integers(cfg.grid)), int(rng.integers(cfg.grid - len(text) + 1))
    gh, gw = text_extent("0", cfg.font_scale)
    tdy, tdx = int(rng.integers(cfg.cell - gh + 1)), int(rng.integers(cfg.cell - gw + 1))
    taken = {(row, col + i) for i in range(len(text))}
    free = [divmod(i, cfg.grid) for i in range(cfg.grid ** 2) if divmod(i, cfg.grid) not in taken]
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = rng.choice(len(free), size=count, replace=False)
    colors = rng.permutation(list(COLORS))[:count]
    objects = []
    for cell_index, color in zip(cells, colors):
        size = int(rng.integers(cfg.cell - 2, cfg.cell))
        dy, dx = (int(v) for v in rng.integers(0, cfg.cell - size + 1, size=2))
        objects.append(SceneObject(SHAPES[rng.integers(len(SHAPES))], str(color),
                                   *free[cell_index], dy, dx, size))
    return Scene(tuple(objects), text, row, col, tdy, tdx, int(rng.integers(0, 48)), int(rng.integers(2**31)))


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a filled circle, square or upward triangle."""
    r = np.arange(size)[:, None] + 0.5
    c = np.arange(size)[None, :] + 0.5
    half = size / 2
    if shape == "circle":
        return (r - half) ** 2 + (c - half) ** 2 <= half ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex at the top centre, base on the bottom row
        return np.abs(c - half) <= half * r / size
    raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")


def render_scene(scene: Scene, cfg: SceneConfig) -> np.ndarray:
    """(image_size, image_size, 3) uint8 image of `scene`."""
    noise = np.random.default_rng(scene.noise_seed).integers(-6, 7, (cfg.image_size,) * 2 + (1,))
    img = np.clip(scene.background + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)
    for obj in scene.objects:
        y, x = obj.row * cfg.cell + obj.dy, obj.col * cfg.cell + obj.dx
        img[y:y + obj.size, x:x + obj.size][shape_mask(obj.shape, obj.size)] = COLORS[obj.color]
    for i, ch in enumerate(scene.text):
        ink = text_mask(ch, cfg.font_scale)
        y, x = scene.text_row * cfg.cell + scene.text_dy, (scene.text_col + i) * cfg.cell + scene.text_dx
        img[y:y + ink.shape[0], x:x + ink.shape[1]][ink] = TEXT_COLOR
    return img


def _position_question(scene: Scene, rng: np.random.Generator):
    """Where an object lies relative to the text: only along an axis where the object's cell is
    outside the text's span (so the answer is never ambiguous)."""
    text_cols = range(scene.text_col, scene.text_col + len(scene.text))
    for i in rng.permutation(len(scene.objects)):
        obj = scene.objects[i]
        relations = []
        if obj.col not in text_cols:
            relations.append(("left or right of", "left" if obj.col < scene.text_col else "right"))
        if obj.row != scene.text_row:
            relations.append(("above or below", "above" if obj.row < scene.text_row else "below"))
        if relations:
            relation, answer = relations[rng.integers(len(relations))]
            return f"is the {obj.color} {obj.shape} {relation} the text ?", answer
    return None


def patch_labels(scene: Scene, cfg: SceneConfig) -> np.ndarray:
    """(grid*grid, 5) int64 per-cell (= per-patch) content, row-major: colour index + 1, shape
    index + 1, glyph index + 1 (0 = none in each) and the cell's row and column. Dense targets
    for an auxiliary probe on the ViT output during training (see train_vqa_vlm.py)."""
    g = cfg.grid
    labels = np.zeros((g * g, 5), dtype=np.int64)
    labels[:, 3], labels[:, 4] = np.divmod(np.arange(g * g), g)
    colors, glyphs = list(COLORS), sorted(GLYPHS)
    for obj in scene.objects:
        labels[obj.row * g + obj.col, :2] = colors.index(obj.color) + 1, SHAPES.index(obj.shape) + 1
    for i, ch in enumerate(scene.text):
        labels[scene.text_row * g + scene.text_col + i, 2] = glyphs.index(ch) + 1
    return labels


def make_question(scene: Scene, task: str, rng: np.random.Generator):
    """(question, answer) of type `task` about `scene`, or None if the scene cannot pose it."""
    if task == "ocr":
        return "what is written ?", scene.text.lower()
    if task == "color":
        unique = [s for s in SHAPES if sum(o.shape == s for o in scene.objects) == 1]
        if not unique:
            return None
        shape = unique[rng.integers(len(unique))]
        return f"what color is the {shape} ?", next(o.color for o in scene.objects if o.shape == shape)
    if task == "shape":
        obj = scene.objects[rng.integers(len(scene.objects))]
        return f"what shape is the {obj.color} object ?", obj.shape
    if task == "count":
        shape = SHAPES[rng.integers(len(SHAPES))]
        return f"how many {shape}s are there ?", str(sum(o.shape == shape for o in scene.objects))
    if task == "position":
        return _position_question(scene, rng)
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def _check_split_tasks(split: str, tasks: tuple[str, ...]) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    bad = sorted(set(tasks) - set(TASKS))
    if bad or not tasks:
        raise ValueError(f"tasks: expected a non-empty subset of {TASKS}, got {tasks}")


def _scenes_of_split(split: str, seed: int, stream: int, cfg: SceneConfig):
    """Endless (rng, scene) stream of `split`; the rng continues to draw the questions."""
    rng = np.random.default_rng([seed, SPLITS.index(split), stream])
    while True:
        scene = sample_scene(rng, cfg)
        if split_of(scene) == split:
            yield rng, scene


def generate_samples(split: str, num_samples: int, seed: int, cfg: SceneConfig = SceneConfig(),
                     stream: int = 0, tasks: tuple[str, ...] = TASKS) -> list[VQASample]:
    """`num_samples` single-question samples of `split`, tasks in round-robin order (balanced),
    one scene each: the evaluation format. Deterministic in (split, seed, stream, cfg, tasks);
    `stream` indexes independent chunks of the same split."""
    _check_split_tasks(split, tasks)
    if num_samples < 0:
        raise ValueError(f"num_samples: expected >= 0, got {num_samples}")
    samples = []
    scenes = _scenes_of_split(split, seed, stream, cfg)
    while len(samples) < num_samples:
        task = tasks[len(samples) % len(tasks)]
        rng, scene = next(scenes)
        qa = make_question(scene, task, rng)
        if qa is not None:
            samples.append(VQASample(render_scene(scene, cfg), qa[0], qa[1], task, scene))
    return samples


def generate_dialogues(split: str, num_scenes: int, seed: int, cfg: SceneConfig = SceneConfig(),
                       stream: int = 0, tasks: tuple[str, ...] = TASKS,
                       questions_per_task: int = 2) -> list[list[VQASample]]:
    """`num_scenes` multi-question dialogues (the training format): per scene up to
    `questions_per_task` questions of every task, shuffled; all samples of a dialogue share the
    scene and image. Many questions per image give many answer tokens per vision forward."""
    _check_split_tasks(split, tasks)
    if questions_per_task < 1:
        raise ValueError(f"questions_per_task: expected >= 1, got {questions_per_task}")
    dialogues = []
    for rng, scene in _scenes_of_split(split, seed, stream, cfg):
        if len(dialogues) == num_scenes:
            break
        image = render_scene(scene, cfg)
        qas = {}
        for task in tasks:
            for _ in range(questions_per_task if task != "ocr" else 1):
                qa = make_question(scene, task, rng)
                if qa is not None:
                    qas.setdefault(qa[0], (task, qa[1]))  # no repeated question
        order = rng.permutation(len(qas))
        items = list(qas.items())
        dialogues.append([VQASample(image, items[i][0], items[i][1][1], items[i][1][0], scene) for i in order])
    return dialogues


def vocabulary() -> list[str]:
    """Every word a question or answer can contain (the tokenizer's vocabulary, lower case)."""
    words = {"what", "is", "written", "color", "the", "shape", "object", "how", "many", "are",
             "there", "or", "of", "?", "left", "right", "above", "below", "text", "answer", ":"}
    words |= set(COLORS) | set(SHAPES) | {s + "s" for s in SHAPES} | {w.lower() for w in OCR_WORDS}
    words |= {str(d) for d in range(10)}
    return sorted(words)
