"""Training a segmentation network from scratch, without manual masks.

The GAN workflow of Rühle, Krumrey & Hodoroaba (Sci. Rep. 11, 4942, 2021): from a few dozen
outlines of single particles and representative micrographs,

1. a shape GAN (:mod:`.shapegan`) learns to invent particle shapes,
2. masks are simulated from them (:mod:`.masks`),
3. a CycleGAN (:mod:`.cyclegan`) turns the masks into fake micrographs (or, on a CPU, the
   project's renderer with its settings fitted to the micrographs, :mod:`.renderer`),
4. an artifact filter (:mod:`.filtering`) drops particles the fakes do not show, and
5. a segmentation network is trained on the fake pairs with :func:`particleseg.train.fit`
   (or a base model, such as the shipped one, is fine-tuned on them),

each stage resumable in a work folder (:mod:`.workflow`). Use :func:`train_from_scratch` or
``particleseg train-from-scratch``.
"""

from .workflow import (
    STAGES,
    ScratchConfig,
    ScratchResult,
    load_inputs,
    redo_stages,
    train_from_scratch,
)

__all__ = ["STAGES", "ScratchConfig", "ScratchResult", "load_inputs", "redo_stages", "train_from_scratch"]
