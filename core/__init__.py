"""Recommendation-reason classifier: a Chinese BERT read with keras-bert, trained with K-fold CV.

Importing the package selects Keras 2 (tf-keras) before TensorFlow is imported anywhere, because
keras-bert and keras-self-attention are Keras 2 libraries.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Quiet TensorFlow's C++ start-up banner; real errors still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
