"""The from-scratch workflow of Rühle, Krumrey & Hodoroaba (2021), stage by stage, resumable.

Input: representative micrographs and a few dozen outlines of single particles. Output: a
model bundle trained only on fake pairs. The work folder holds one subfolder per stage::

    1_shapes/        shape GAN (WGAN-GP): checkpoint, log, generator, shapes.npz, samples.png
    2_masks/         simulated label images labels/NNNNN.tif, summary.json, samples.png
    3_cyclegan/      CycleGAN: checkpoint, log, progress.png, g_ab.keras,
                     fake micrographs fakes/NNNNN.tif, samples.png
    4_filter/        filtered label images labels/NNNNN.tif, summary.csv/json, samples.png
    5_segmentation/  train/ (checkpoints, log, loss.png), bundle/, samples.png

Each stage writes ``stage.json`` with its settings (and those of the stages before it, and the
fingerprints of the inputs) when it starts and marks it ``done`` at the end. A finished stage
is not redone; an interrupted one resumes from its checkpoints and files; a stage whose
settings changed is refused with a message (run it again with ``redo``, which also redoes the
stages after it, or use another work folder), so nothing finished is lost by accident.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExistsError
from ..io import check_outputs, list_images, read_array, read_image, write_atomic
from ..preprocess import detect_data_bar, normalize_percentile
from .cyclegan import CycleGanConfig, fake_micrographs, mask_domain, normalize_real, train_cyclegan
from .filtering import filter_pairs
from .grids import outline_overlay, save_grid
from .masks import MaskConfig, simulate_masks, target_mask
from .renderer import RendererConfig, fit_renderer, render_fakes, save_fit
from .shapegan import ShapeGanConfig, load_outlines, shape_bank, shape_stats, train_shape_gan

STAGES = ("shapes", "masks", "cyclegan", "filter", "segmentation")
STAGE_DIRS = {
    "shapes": "1_shapes",
    "masks": "2_masks",
    "cyclegan": "3_cyclegan",
    "filter": "4_filter",
    "segmentation": "5_segmentation",
}
STAGE_TITLES = {
    "shapes": "stage 1, shape GAN",
    "masks": "stage 2, mask simulation",
    "cyclegan": "stage 3, CycleGAN",
    "filter": "stage 4, artifact filter",
    "segmentation": "stage 5, segmentation training",
}
#: how stage 3 turns masks into fake micrographs
TRANSLATORS = ("cyclegan", "renderer")
RENDERER_TITLE = "stage 3, renderer fit"


def _default_train_config():
    from ..models import Head, NetworkConfig
    from ..train import Augmentation, TrainConfig

    return TrainConfig(
        network=NetworkConfig("multires-unet", heads=(Head("foreground"), Head("distance")), depth=4, base_filters=16),
        tile=256,
        batch_size=8,
        epochs=50,
        steps_per_epoch=100,
        validation_steps=10,
        learning_rate=1e-3,
        lr_step_epochs=20,
        lr_step_factor=0.5,
        patience=0,
        jit_compile=True,
        augmentation=Augmentation(brightness=0.1, contrast=0.2, gamma=0.3, noise=0.03),
    )


@dataclass
class ScratchConfig:
    """All settings of a from-scratch run (stored in the bundle's metadata).

    Attributes
    ----------
    pairs : int
        Fake training pairs (simulated masks, their fake micrographs): 1000 by default.
    polarity : {"bright", "dark"}
        Particles brighter than the background (SEM) or darker (brightfield TEM).
    crop_rows : int or "auto"
        Rows at the bottom of the micrographs to ignore (data bar); ``auto`` detects them.
    filter_method : {"li", "otsu", "mean", "median", "none"}
        Threshold of the artifact filter (stage 4).
    min_kept_fraction : float
        Stage 4 stops with a message when its filter keeps fewer of the simulated particles:
        the fake micrographs then do not show them (typically a CycleGAN that rendered the
        particles with inverted contrast, or the wrong ``polarity``).
    val_fraction : float
        Fake pairs held out to validate the segmentation training and choose its
        post-processing (no real mask is ever used).
    name : str
        Name of the resulting bundle.
    translator : {"cyclegan", "renderer"}
        Stage 3: the publication's CycleGAN, or the project's micrograph renderer with its
        settings fitted to the micrographs (:mod:`.renderer`; minutes on a CPU).
    renderer : RendererConfig
        Settings of the renderer fit (``translator="renderer"``).
    base_model : str, optional
        Stage 5 fine-tunes this bundle (``"default"``: the shipped model) with the fine-tuning
        recipe of ``particleseg train`` (encoder frozen for a warm-up, cosine learning rate,
        Dice, best epoch by the instance score of the held-out fake pairs) instead of training
        ``segmentation.network`` from random weights.
    segmentation_minutes : float, optional
        Time budget of stage 5 when fine-tuning (``segmentation.epochs`` otherwise).
    """

    shapes: ShapeGanConfig = field(default_factory=ShapeGanConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    cyclegan: CycleGanConfig = field(default_factory=CycleGanConfig)
    segmentation: Any = field(default_factory=_default_train_config)  # train.TrainConfig
    pairs: int = 1000
    polarity: str = "bright"
    crop_rows: int | str = "auto"
    filter_method: str = "li"
    min_kept_fraction: float = 0.25
    val_fraction: float = 0.05
    name: str = "from-scratch"
    translator: str = "cyclegan"
    renderer: RendererConfig = field(default_factory=RendererConfig)
    base_model: str | None = None
    segmentation_minutes: float | None = None

    def __post_init__(self):
        """Check the settings.

        Raise InputError for an unknown translator or polarity, a segmentation time budget that
        is not positive, or fewer than 2 pairs.
        """
        if self.translator not in TRANSLATORS:
            raise InputError(f"{self.translator}: unknown translator (choose {' or '.join(TRANSLATORS)})")
        if self.segmentation_minutes is not None and not self.segmentation_minutes > 0:
            raise InputError(f"{self.segmentation_minutes}: the segmentation time budget must be positive")
        if self.polarity not in ("bright", "dark"):
            raise InputError(f"{self.polarity}: polarity must be 'bright' or 'dark'")
        if self.pairs < 2:
            raise InputError(f"{self.pairs}: need at least 2 fake pairs (one for validation)")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict, each stage's settings as a nested dict."""
        return {
            "shapes": self.shapes.to_dict(),
            "masks": self.masks.to_dict(),
            "cyclegan": self.cyclegan.to_dict(),
            "segmentation": self.segmentation.to_dict(),
            "pairs": self.pairs,
            "polarity": self.polarity,
            "crop_rows": self.crop_rows,
            "filter_method": self.filter_method,
            "min_kept_fraction": self.min_kept_fraction,
            "val_fraction": self.val_fraction,
            "name": self.name,
            "translator": self.translator,
            "renderer": self.renderer.to_dict(),
            "base_model": self.base_model,
            "segmentation_minutes": self.segmentation_minutes,
        }

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> ScratchConfig:
        """Named configurations.

        ``default``: the publication's scale (1000 pairs of 384x384, CycleGAN with 64-filter
        generators and 9 residual blocks, MultiRes UNet), meant for a GPU.
        ``cpu``: the whole workflow in about 70 minutes on two CPU cores: a small shape GAN,
        200 pairs, the renderer fitted to the micrographs instead of the CycleGAN (its reduced
        settings remain for ``translator="cyclegan"``) and the shipped default model fine-tuned
        on the fake pairs for 75 minutes; see ``docs/from-scratch.md``.
        ``tiny``: seconds to minutes, for tests (tiny networks, 64-px masks, few steps).
        """
        from ..models import Head, NetworkConfig
        from ..train import Augmentation, TrainConfig

        if name == "default":
            cfg = cls(
                cyclegan=CycleGanConfig(
                    filters=64, res_blocks=9, disc_filters=64, disc_layers=3, crop=384, batch_size=1, steps=20000
                ),
                shapes=ShapeGanConfig(filters=32, steps=3000, batch_size=64),
            )
        elif name == "cpu":
            # stage 3: the renderer fitted to the micrographs (the CycleGAN settings below apply with
            # translator="cyclegan"); stage 5: the shipped model fine-tuned with train's recipe
            cfg = cls(
                shapes=ShapeGanConfig(filters=16, steps=300, batch_size=16, jit=False),
                masks=MaskConfig(tile=384),
                cyclegan=CycleGanConfig(
                    filters=16,
                    res_blocks=4,
                    disc_filters=16,
                    disc_layers=3,
                    crop=128,
                    batch_size=1,
                    steps=600,
                    checkpoint_every=100,
                    inference_batch=2,
                    jit=False,
                ),
                translator="renderer",
                base_model="default",
                segmentation_minutes=75.0,
                segmentation=TrainConfig(
                    network=NetworkConfig(
                        "unet", heads=(Head("foreground"), Head("distance")), depth=4, base_filters=16
                    ),
                    tile=256,
                    batch_size=8,
                    epochs=10,
                    steps_per_epoch=40,
                    validation_steps=4,
                    learning_rate=5e-4,
                    schedule="cosine",
                    freeze_epochs=-1,
                    select="val_score",
                    dice=True,
                    patience=0,
                    jit_compile=True,
                    augmentation=Augmentation(brightness=0.1, contrast=0.2, gamma=0.3, noise=0.03),
                ),
                pairs=200,
            )
        elif name == "tiny":
            cfg = cls(
                shapes=ShapeGanConfig(
                    size=32,
                    latent_dim=16,
                    filters=4,
                    steps=20,
                    batch_size=8,
                    critic_steps=2,
                    min_outlines=4,
                    bank_size=64,
                    checkpoint_every=10,
                    jit=False,
                ),
                masks=MaskConfig(tile=64, count=(10, 16), margin=16),
                cyclegan=CycleGanConfig(
                    filters=4,
                    res_blocks=1,
                    disc_filters=4,
                    disc_layers=2,
                    crop=32,
                    batch_size=2,
                    steps=10,
                    pool_size=4,
                    checkpoint_every=5,
                    jit=False,
                ),
                segmentation=TrainConfig(
                    # group normalisation: batch normalisation's moving statistics need hundreds of
                    # steps, so after a few the network would output a constant in inference mode
                    network=NetworkConfig(
                        "unet",
                        heads=(Head("foreground"), Head("distance")),
                        depth=2,
                        base_filters=4,
                        normalization="group",
                    ),
                    tile=32,
                    batch_size=4,
                    epochs=2,
                    steps_per_epoch=3,
                    validation_steps=1,
                    learning_rate=3e-3,
                    patience=0,
                    jit_compile=False,
                ),
                renderer=RendererConfig(candidates=6, refine=2, keep=2, masks_per_candidate=1, crops_per_image=2),
                pairs=12,
                val_fraction=0.2,
                min_kept_fraction=0.0,  # ten CycleGAN steps render noise: keep the run going
            )
        else:
            raise InputError(f"{name}: unknown preset (choose default, cpu or tiny)")
        return dataclasses.replace(cfg, **overrides) if overrides else cfg


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class Inputs:
    """The checked inputs of a run, as :func:`load_inputs` returns them.

    The cropped micrographs and their files, the outline masks and their files, the rows cropped
    and a fingerprint of the inputs (digests of both sets of files, and ``crop_rows``).
    """

    images: list[np.ndarray]  # cropped micrographs (raw gray values)
    image_files: list[Path]
    outlines: np.ndarray  # (N, size, size) bool
    outline_files: list[Path]
    crop_rows: int
    fingerprint: dict


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha1(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def load_inputs(images: str | os.PathLike | Sequence, outlines: str | os.PathLike, config: ScratchConfig) -> Inputs:
    """Read and check the micrographs and the outlines before any work is done.

    Raises InputError naming the file, the stage that needs it and what to change: too few or
    bad outlines (stage 1), micrographs of mixed sizes or bit depths, stacks, or smaller than
    the CycleGAN crop (stage 3).
    """
    stage3 = RENDERER_TITLE if config.translator == "renderer" else STAGE_TITLES["cyclegan"]
    shapes, outline_files = load_outlines(outlines, config.shapes.size, config.shapes.min_outlines)
    sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    files = list_images(sources)
    if not files:
        raise InputError(
            f"{', '.join(map(str, sources))}: no micrographs (TIFF, PNG, JPEG) found "
            f"({stage3}: give a folder of real images)"
        )
    raw = []
    for f in files:
        img, _ = read_image(f)
        if img.ndim != 2:
            raise InputError(f"{f}: is a stack of {img.shape[0]} images ({stage3}: give single 2D micrographs)")
        if raw and (img.shape != raw[0].shape or img.dtype != raw[0].dtype):
            raise InputError(
                f"{f}: {img.shape[1]}x{img.shape[0]} pixels, {img.dtype}, but {files[0].name} is "
                f"{raw[0].shape[1]}x{raw[0].shape[0]}, {raw[0].dtype} ({stage3}: all micrographs must have the same "
                f"size and bit depth, taken at the same magnification; convert them or run them separately)"
            )
        raw.append(img)
    if config.crop_rows == "auto":
        crop = max(detect_data_bar(im) for im in raw)
    else:
        crop = int(config.crop_rows)
    if crop:
        raw = [im[: im.shape[0] - crop] for im in raw]
    side = min(raw[0].shape)
    if config.translator == "cyclegan" and side < config.cyclegan.crop:
        raise InputError(
            f"{files[0]}: {raw[0].shape[1]}x{raw[0].shape[0]} pixels (after cropping {crop} rows) is smaller than the "
            f"CycleGAN crop {config.cyclegan.crop} ({stage3}: set --cyclegan-crop to at most {side // 4 * 4})"
        )
    fp = {"outlines": _digest(outline_files), "images": _digest(files), "crop_rows": crop}
    return Inputs(raw, files, shapes, outline_files, crop, fp)


# --------------------------------------------------------------------------------------------
# stage bookkeeping


class Stage:
    """A stage's folder and its ``stage.json`` (settings, status, timings, summary)."""

    def __init__(self, work: Path, name: str, params: dict):
        self.name, self.dir = name, work / STAGE_DIRS[name]
        self.title = STAGE_TITLES[name]
        self.params = json.loads(json.dumps(params, default=str))
        self.file = self.dir / "stage.json"

    def record(self) -> dict | None:
        """Return the contents of ``stage.json``, or None when the stage has not started."""
        return json.loads(self.file.read_text()) if self.file.exists() else None

    @property
    def done(self) -> bool:
        """Whether the stage's record says it is done."""
        rec = self.record()

        return bool(rec and rec.get("status") == "done")

    def check(self) -> None:
        """Raise InputError when the stage was run with other settings than ``params``."""
        rec = self.record()
        if rec is None:
            return
        if rec.get("params") != self.params:
            changed = sorted(_diff(rec.get("params", {}), self.params))
            raise InputError(
                f"{self.dir}: {self.title} was run with other settings (changed: {', '.join(changed[:6])}"
                f"{' ...' if len(changed) > 6 else ''}); rerun it with --redo {self.name} (also redoes the "
                f"later stages) or use another --work folder"
            )

    def start(self) -> None:
        """Create the stage's folder and mark the stage running (keeping an earlier record's time)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = self.record() or {"params": self.params, "status": "running", "seconds": 0.0, "started": _now()}
        rec["status"] = "running"
        self._write(rec)
        self._t0 = time.time()
        self._base = rec.get("seconds", 0.0)

    def finish(self, summary: dict | None = None) -> None:
        """Mark the stage done, with its total time and ``summary``."""
        rec = self.record()
        rec.update(
            status="done", finished=_now(), seconds=round(self._base + time.time() - self._t0, 3), summary=summary or {}
        )
        self._write(rec)

    def interrupted(self) -> None:
        """Record the time spent so far when the stage stopped before it was done."""
        rec = self.record()
        if rec and rec.get("status") != "done":
            rec["seconds"] = round(self._base + time.time() - self._t0, 3)
            self._write(rec)

    def _write(self, rec):
        text = json.dumps(rec, indent=2, default=str)
        write_atomic(self.file, lambda tmp: tmp.write_text(text), overwrite=True)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().isoformat(timespec="seconds")


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def redo_stages(work: str | os.PathLike, stage: str) -> None:
    """Delete the folder of ``stage`` and of every stage after it."""
    if stage not in STAGES:
        raise InputError(f"{stage}: unknown stage (choose {', '.join(STAGES)})")
    for s in STAGES[STAGES.index(stage) :]:
        d = Path(work) / STAGE_DIRS[s]
        if d.exists():
            shutil.rmtree(d)


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class ScratchResult:
    """What :func:`train_from_scratch` returns: the bundle, the work folder, and each stage's time and summary."""

    bundle: Any  # models.Bundle
    work: Path
    seconds: dict[str, float]
    summaries: dict[str, dict]


def _say(msg: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)


def train_from_scratch(
    images: str | os.PathLike | Sequence,
    outlines: str | os.PathLike,
    out: str | os.PathLike,
    work: str | os.PathLike | None = None,
    config: ScratchConfig | None = None,
    overwrite: bool = False,
    redo: str | None = None,
    progress: bool = True,
    stop_after: str | None = None,
) -> ScratchResult | None:
    """Run the whole workflow: outlines + micrographs -> model bundle at ``out``.

    Parameters
    ----------
    images : folder, or list of files/folders
        Representative micrographs (same size and bit depth). No mask is needed.
    outlines : folder
        Binary images, each one white particle on black (about 40).
    out : path
        The bundle folder to write.
    work : path, optional
        Work folder with one subfolder per stage (default: ``OUT.work`` beside ``out``).
    config : ScratchConfig
        Default: ``ScratchConfig()`` (the publication's scale; use ``ScratchConfig.preset("cpu")``
        without a GPU).
    overwrite : bool
        Replace an existing bundle at ``out``.
    redo : str, optional
        Run this stage (and every later one) again from scratch.
    progress : bool
        Progress bars and stage messages on stderr.
    stop_after : str, optional
        Stop after this stage (for inspecting the sample grids before the costly stages).

    Returns
    -------
    ScratchResult, or None when stopped early.
    """
    config = config or ScratchConfig()
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    check_outputs([out], overwrite)
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"{stop_after}: unknown stage (choose {', '.join(STAGES)})")
    inputs = load_inputs(images, outlines, config)
    if redo:
        redo_stages(work, redo)
    work.mkdir(parents=True, exist_ok=True)

    cfg = config.to_dict()
    params = {
        "shapes": {"shapes": cfg["shapes"], "outlines": inputs.fingerprint["outlines"]},
    }
    params["masks"] = {**params["shapes"], "masks": cfg["masks"], "pairs": config.pairs}
    stage3 = (
        {"translator": "renderer", "renderer": cfg["renderer"]}
        if config.translator == "renderer"
        else {"cyclegan": cfg["cyclegan"]}
    )
    params["cyclegan"] = {
        **params["masks"],
        **stage3,
        "polarity": config.polarity,
        "images": inputs.fingerprint["images"],
        "crop_rows": inputs.crop_rows,
    }
    params["filter"] = {
        **params["cyclegan"],
        "filter_method": config.filter_method,
        "min_kept_fraction": config.min_kept_fraction,
    }
    params["segmentation"] = {
        **params["filter"],
        "segmentation": cfg["segmentation"],
        "val_fraction": config.val_fraction,
    }
    if config.base_model:
        params["segmentation"].update(base_model=config.base_model, segmentation_minutes=config.segmentation_minutes)
    stages = {name: Stage(work, name, params[name]) for name in STAGES}
    if config.translator == "renderer":
        stages["cyclegan"].title = RENDERER_TITLE
    for s in stages.values():  # refuse changed settings before doing any work
        s.check()

    runners = {
        "shapes": _run_shapes,
        "masks": _run_masks,
        "cyclegan": _run_renderer if config.translator == "renderer" else _run_cyclegan,
        "filter": _run_filter,
        "segmentation": _run_segmentation,
    }
    ctx: dict[str, Any] = {"inputs": inputs, "config": config, "work": work, "progress": progress}
    seconds, summaries = {}, {}
    for name in STAGES:
        st = stages[name]
        if st.done:
            _say(f"{st.title}: done earlier ({st.dir})", progress)
        else:
            _say(f"{st.title}: {'resuming' if st.record() else 'starting'} in {st.dir}", progress)
            st.start()
            try:
                summary = runners[name](st, ctx)
            except BaseException:
                st.interrupted()
                raise
            st.finish(summary)
        rec = st.record()
        seconds[name], summaries[name] = rec.get("seconds", 0.0), rec.get("summary", {})
        _load_outputs(name, st, ctx)
        if stop_after == name:
            _say(f"stopped after {st.title}; the sample grids are in {work}", progress)
            return None

    bundle_dir = stages["segmentation"].dir / "bundle"
    _copy_bundle(bundle_dir, out, overwrite)
    from ..models import load_bundle

    bundle = load_bundle(out)
    _say(f"wrote the bundle {out} ({sum(seconds.values()) / 60:.1f} min of stage time in total)", progress)
    return ScratchResult(bundle, work, seconds, summaries)


def _copy_bundle(src: Path, dst: Path, overwrite: bool) -> None:
    import tempfile

    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst}: bundle exists; use --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _load_outputs(name: str, st: Stage, ctx: dict) -> None:
    """Paths of a finished stage's outputs, for the next stages."""
    if name == "shapes":
        ctx["shapes"] = np.load(st.dir / "shapes.npz")["shapes"]
    elif name == "masks":
        ctx["labels"] = [st.dir / "labels" / f"{i:05d}.tif" for i in range(ctx["config"].pairs)]
    elif name == "cyclegan":
        ctx["fakes"] = [st.dir / "fakes" / p.name for p in ctx["labels"]]
    elif name == "filter":
        ctx["filtered"] = [st.dir / "labels" / p.name for p in ctx["labels"]]


def _run_shapes(st: Stage, ctx: dict) -> dict:
    cfg: ScratchConfig = ctx["config"]
    outlines = ctx["inputs"].outlines
    gen = train_shape_gan(outlines, cfg.shapes, st.dir, ctx["progress"])
    bank = shape_bank(gen, cfg.shapes, outlines, st.dir)
    ref, new = shape_stats(outlines), shape_stats(bank)
    return {
        "outlines": len(outlines),
        "shapes": len(bank),
        "outline_median_ecd": ref["median_ecd"],
        "shape_median_ecd": new["median_ecd"],
    }


def _run_masks(st: Stage, ctx: dict) -> dict:
    cfg: ScratchConfig = ctx["config"]
    simulate_masks(ctx["shapes"], cfg.pairs, cfg.masks, st.dir, ctx["progress"])
    return json.loads((st.dir / "summary.json").read_text())


def _run_cyclegan(st: Stage, ctx: dict) -> dict:
    cfg: ScratchConfig = ctx["config"]
    cc = cfg.cyclegan
    gen_file = st.dir / "g_ab.keras"
    if gen_file.exists():
        import keras

        gen = keras.saving.load_model(gen_file, compile=False)
    else:
        # domain A: the simulated masks the CycleGAN trains on (at most 500, spread over the set)
        paths = ctx["labels"]
        pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 500)).astype(int))
        masks = [mask_domain(target_mask(read_array(paths[i])), cfg.polarity) for i in pick]
        images = [normalize_real(im) for im in ctx["inputs"].images]
        gen = train_cyclegan(masks, images, cc, st.dir, cfg.polarity, ctx["progress"])
    fakes = fake_micrographs(gen, ctx["labels"], st.dir / "fakes", cfg.polarity, cc.inference_batch, ctx["progress"])
    tiles = [outline_overlay(read_array(f), read_array(p)) for f, p in zip(fakes[:16], ctx["labels"][:16])]
    save_grid(st.dir / "samples.png", tiles, columns=4, gap=4)
    return {"fake_micrographs": len(fakes)}


def _run_renderer(st: Stage, ctx: dict) -> dict:
    """Stage 3 with the renderer: fit its settings to the micrographs, render every mask."""
    cfg: ScratchConfig = ctx["config"]
    fit_file = st.dir / "fit.json"
    if fit_file.exists():
        fit = json.loads(fit_file.read_text())
    else:
        paths = ctx["labels"]
        pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 24)).astype(int))
        masks = [read_array(paths[i]) for i in pick]
        fit = fit_renderer(masks, ctx["inputs"].images, cfg.polarity, cfg.renderer, ctx["progress"])
        save_fit(fit, fit_file)
    fakes = render_fakes(fit, ctx["labels"], st.dir / "fakes", cfg.renderer.seed, ctx["progress"])
    tiles = [outline_overlay(read_array(f), read_array(p)) for f, p in zip(fakes[:16], ctx["labels"][:16])]
    save_grid(st.dir / "samples.png", tiles, columns=4, gap=4)
    return {
        "fake_micrographs": len(fakes),
        "renderer": fit["style"],
        "fit_distance": fit["distances"][0],
        "median_distance_of_prior_draws": fit["median_distance_of_prior_draws"],
    }


def _run_filter(st: Stage, ctx: dict) -> dict:
    cfg: ScratchConfig = ctx["config"]
    filter_pairs(
        ctx["labels"],
        ctx["fakes"],
        st.dir,
        cfg.filter_method,
        cfg.polarity,
        ctx["progress"],
        min_kept=cfg.min_kept_fraction,
    )
    return json.loads((st.dir / "summary.json").read_text())


NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}


def _run_segmentation(st: Stage, ctx: dict) -> dict:
    from ..models import make_metadata, save_bundle
    from ..train import fit

    cfg: ScratchConfig = ctx["config"]
    if cfg.base_model:
        return _fine_tune_segmentation(st, ctx)
    tc = cfg.segmentation
    norm = NORMALIZATION
    x = [
        normalize_percentile(read_array(f), norm["low"], norm["high"], tuple(norm["clip"]))[..., None]
        for f in ctx["fakes"]
    ]
    y = [read_array(f).astype(np.int32) for f in ctx["filtered"]]
    n_val = max(1, int(round(cfg.val_fraction * len(x))))
    if n_val >= len(x):
        raise InputError(f"{st.dir}: {len(x)} fake pairs leave none for training ({st.title}: raise --pairs)")
    if not any(lab.max() for lab in y[:-n_val]):
        raise InputError(
            f"{st.dir}: every training mask is empty after the artifact filter ({st.title}: see 4_filter/samples.png; "
            f"check --polarity and --filter-method)"
        )
    model, log = fit(
        x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], tc, st.dir / "train", verbose=1 if ctx["progress"] else 0
    )
    heads = [h.kind for h in tc.network.heads]
    post, fake_iou = choose_postprocess(model, x[-n_val:], y[-n_val:], heads, tc.network.multiple_of)
    inputs = ctx["inputs"]
    ecd = shape_stats(inputs.outlines)["median_ecd"]
    meta = make_metadata(
        cfg.name,
        tc.network,
        description=(
            "Trained from scratch without manual masks (Rühle, Krumrey & Hodoroaba, Sci. Rep. 2021 workflow): "
            f"{len(inputs.image_files)} micrographs and {len(inputs.outline_files)} particle outlines."
        ),
        channels=["micrograph"],
        normalization=norm,
        tile=1024,
        overlap=48,
        particle_size_px=round(float(ecd), 2),
        polarity=cfg.polarity,
        postprocess={**post, "min_area": 15},
        training={
            **_workflow_record(ctx, ecd),
            "config": cfg.to_dict(),
            "epochs_run": len(log),
            "command": " ".join(sys.argv) if sys.argv and "particleseg" in sys.argv[0] else None,
        },
        metrics={
            "fake_validation_instance_iou": round(fake_iou, 4),
            "final_loss": log[-1].get("loss") if log else None,
            "final_val_loss": log[-1].get("val_loss") if log else None,
        },
    )
    bundle = save_bundle(st.dir / "bundle", model, meta, overwrite=True, zip_copy=False)
    _held_out_samples(bundle, ctx["fakes"][-n_val:], st.dir / "samples.png")
    return {"epochs": len(log), "fake_validation_instance_iou": round(fake_iou, 4), **post}


def _workflow_record(ctx: dict, ecd: float) -> dict:
    """Return what a from-scratch bundle records of its inputs and stages (``training`` metadata)."""
    inputs: Inputs = ctx["inputs"]
    return {
        "workflow": "particleseg train-from-scratch",
        "images": {
            "folder": str(inputs.image_files[0].parent),
            "count": len(inputs.image_files),
            "crop_rows": inputs.crop_rows,
            "fingerprint": inputs.fingerprint["images"],
        },
        "outlines": {
            "folder": str(inputs.outline_files[0].parent),
            "count": len(inputs.outline_files),
            "median_ecd_px": round(float(ecd), 2),
            "fingerprint": inputs.fingerprint["outlines"],
        },
        "stage_seconds": {s: (Stage(ctx["work"], s, {}).record() or {}).get("seconds") for s in STAGES[:-1]},
    }


def _held_out_samples(bundle, fakes: Sequence[Path], path: Path) -> None:
    """``samples.png``: the bundle's segmentation of (up to 8) held-out fake micrographs."""
    from ..pipeline import SegmentParams, segment_image

    tiles = []
    for f in fakes[:8]:
        img = read_array(f)
        seg = segment_image(img, bundle, SegmentParams(crop_rows=0, exclude_border=False, progress=False))
        tiles.append(outline_overlay(img, seg.labels))
    save_grid(path, tiles, columns=4, gap=4)


def _fine_tune_segmentation(st: Stage, ctx: dict) -> dict:
    """Run stage 5 from a base model: ``particleseg train``'s fine-tuning recipe on the fake pairs.

    The held-out pairs validate and choose the post-processing; no real mask is used.
    """
    from ..models import load_bundle, write_metadata
    from ..train import train_segmentation

    cfg: ScratchConfig = ctx["config"]
    tc = cfg.segmentation
    fakes, labels = ctx["fakes"], ctx["filtered"]
    n_val = max(1, int(round(cfg.val_fraction * len(fakes))))
    if n_val >= len(fakes):
        raise InputError(f"{st.dir}: {len(fakes)} fake pairs leave none for training ({st.title}: raise --pairs)")
    out = st.dir / "bundle"
    inputs = ctx["inputs"]
    bundle = train_segmentation(
        fakes[:-n_val],
        labels[:-n_val],
        out,
        validation_images=fakes[-n_val:],
        validation_masks=labels[-n_val:],
        base_model=cfg.base_model,
        mask_kind="labels",
        polarity=cfg.polarity,
        tile=tc.tile,
        batch_size=tc.batch_size,
        epochs=tc.epochs,
        steps_per_epoch=tc.steps_per_epoch,
        validation_steps=tc.validation_steps,
        learning_rate=tc.learning_rate,
        schedule=tc.schedule,
        freeze_epochs=tc.freeze_epochs,
        select=tc.select,
        dice=tc.dice,
        separation_weight=tc.separation_weight,
        patience=tc.patience,
        select_from=tc.select_from,  # (the measured cpu preset: any epoch; see docs/from-scratch.md)
        minutes=cfg.segmentation_minutes,
        augmentation=tc.augmentation,
        seed=tc.seed,
        name=cfg.name,
        workdir=st.dir / "train",
        overwrite=True,
        progress=ctx["progress"],
        jit_compile=tc.jit_compile,
        description=(
            f"fine-tuned from {cfg.base_model} on fake pairs of the from-scratch workflow (Rühle, Krumrey & "
            f"Hodoroaba, Sci. Rep. 2021): {len(inputs.image_files)} micrographs and "
            f"{len(inputs.outline_files)} particle outlines, no manual mask"
        ),
    )
    meta = bundle.metadata
    ecd = shape_stats(inputs.outlines)["median_ecd"]
    meta["training"].update({**_workflow_record(ctx, ecd), "scratch_config": cfg.to_dict()})
    write_metadata(out, meta)
    bundle = load_bundle(out)
    _held_out_samples(bundle, fakes[-n_val:], st.dir / "samples.png")
    m = bundle.metadata.get("metrics", {}).get("validation", {})
    return {
        "base_model": cfg.base_model,
        "fake_validation_instance_iou": m.get("instance_iou"),
        **{k: bundle.postprocess.get(k) for k in ("threshold", "seed_threshold", "seed_depth", "min_confidence")},
    }


def choose_postprocess(model, images, labels, heads, multiple_of: int = 16) -> tuple[dict, float]:
    """Choose the threshold and watershed seeds that maximise the instance IoU on held-out *fake* pairs.

    Never on real masks. Return the post-processing settings and their instance IoU.

    """
    from ..inference import predict_tiled
    from ..models import keras_predictor
    from ..train import validation_scores

    predict = keras_predictor(model)
    probs = [predict_tiled(predict, im, tile=512, overlap=32, multiple_of=multiple_of, progress=False) for im in images]
    # no merge of touching particles (merge_level): whether the foreground dips between touching
    # particles is the simulator's here, not the microscope's, and on real images the merge
    # harms a network trained on simulated ones (the shipped model, docs/training.md)
    post, scores = validation_scores(probs, labels, heads, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7), merge_levels=())
    return post, scores["instance_iou"]
