"""pixelllm_d2: Pixel-Aligned Language Models (PixelLLM, CVPR 2024) in PyTorch, shaped like a detectron2 project."""
from setuptools import find_packages, setup

# Ranges that resolve together (see MODEL_ZOO.md / docs); fvcore and iopath stay inside detectron2's own pins so
# both packages can live in one environment.
INSTALL_REQUIRES = [
    "torch>=2.4,!=2.13.*",
    "torchvision>=0.19,!=0.28.0",
    "segment-anything==1.0",
    "timm>=1.0.9,<2",
    "transformers>=4.57,<6",
    "peft>=0.13,<1",
    "accelerate>=1.0",
    "safetensors>=0.4.3",
    "sentencepiece>=0.2.0",
    "protobuf>=4.21",
    "fvcore>=0.1.5.post20221221,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.7",
    "lvis==0.5.3",
    "opencv-python>=4.8",
    "numpy>=1.26",
    "pyyaml>=6",
    "pillow>=10",
    "tensorboard>=2.14",
    "tqdm>=4.60",
    "tabulate>=0.9",
]

setup(
    name="pixelllm_d2",
    version="0.1.0",
    description="PixelLLM (Pixel-Aligned Language Models) in PyTorch: per-word grounding, region captioning, "
    "referring boxes and masks, dense captioning",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets", "docs")),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "eval": ["pycocoevalcap==1.2"],
        # Selenium drives Debian's chromium in the web viewer's browser test (.ci/run installs the browser)
        "test": ["pytest>=8", "scikit-image", "selenium>=4.20"],
        # tools/web_demo.py (Gradio 6 pages; gradio_client comes with it); scikit-image: the example photos
        "web": ["gradio>=6,<7", "scikit-image"],
    },
)
