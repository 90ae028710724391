"""The web viewer's example images, written into a folder at start-up (Gradio serves files from its own places, so
the examples are copies): the docs' shapes scene when the checkout has it, fresh scenes of the embedded benchmark's
kind, and scikit-image's public-domain photos when scikit-image is installed."""
import os
import shutil
from typing import List, Optional

import numpy as np
from PIL import Image

__all__ = ["write_examples"]

# Scenes drawn by the benchmark's own generator from seeds it does not use (it seeds with (seed, split, index)).
_SCENE_SEED = 20240611
_PHOTOS = ("astronaut", "coffee", "chelsea")


def write_examples(folder: str, docs_scene: Optional[str] = None, num_scenes: int = 2) -> List[str]:
    """Write the example images into `folder`; returns their paths (shapes scenes first).

    Args:
        docs_scene: the docs' shapes scene (docs/demo/inputs/shapes_scene.png), copied first when it exists.
        num_scenes: fresh shapes scenes to draw.
    """
    from ..data.datasets.shapes_scenes import render_scene, sample_scene

    os.makedirs(folder, exist_ok=True)
    paths = []
    if docs_scene and os.path.isfile(docs_scene):
        paths.append(os.path.join(folder, "shapes_scene.png"))
        shutil.copyfile(docs_scene, paths[-1])
    for i in range(num_scenes):
        rng = np.random.default_rng([_SCENE_SEED, i])
        width, height, objects = sample_scene(rng)
        paths.append(os.path.join(folder, f"shapes_{i + 1}.png"))
        Image.fromarray(render_scene(rng, width, height, objects)).save(paths[-1])
    try:
        from skimage import data
    except ImportError:  # the photos are a convenience: the `web` extra installs scikit-image
        return paths
    for name in _PHOTOS:
        paths.append(os.path.join(folder, f"{name}.png"))
        Image.fromarray(getattr(data, name)()).save(paths[-1])
    return paths
