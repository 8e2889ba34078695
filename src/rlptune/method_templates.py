"""Method data: the class-prompt templates the methods' official code hard-codes, keyed as that code keys them.

KgCoOp's hand-crafted prompt per CoOp dataset (its knowledge-guidance target, also a per-dataset value of its
recipe) and PromptSRC's 60-template ensemble (its frozen regulariser). Each table names the official file it was
read from (``owner/repo:path``, at the commit :data:`rlptune.recipes.REPOSITORIES` lists). Pure data: the recipes
cite it and the methods read it, and importing it imports nothing (so the recipes stay torch-free).
"""

from __future__ import annotations

#: KgCoOp's hand-crafted prompt per dataset (its ``CUSTOM_TEMPLATES``). Equal to CoOp's zero-shot templates except
#: DescribableTextures ("a photo of a {}, a type of texture." instead of "{} texture.").
KGCOOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
KGCOOP_TEMPLATES_SOURCE = "htyao89/KgCoOp:KgCoOp/trainers/kgcoop.py"

#: PromptSRC's textual-diversity ensemble: the 60 templates of its ``IMAGENET_TEMPLATES`` (a subset of CLIP's 80
#: ImageNet templates, in this order); the frozen text feature of a class is the mean of its 60 encoded prompts.
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)
PROMPTSRC_TEMPLATES_SOURCE = "muzairkhattak/PromptSRC:trainers/imagenet_templates.py"
