"""Stage 4: the mask-guided ViT (MGViT) and its teacher-student training (docs/method.md).

- `model`: MGViT as a short extension of timm's ViT blocks; `heads`: projector and cosine heads,
  `build_model`; `augment`: the views; `losses`: the discovery loss and teacher temperature.
- `train`: whole training, one epoch, one step; `checkpoint`: checkpoint files and resume;
  `inference`: features and class probabilities; `distributed`: torchrun support.

Every module here needs torch; nothing is imported until a submodule is.
"""
