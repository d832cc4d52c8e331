"""Recommendation-reason classifier: a Chinese BERT read with keras-bert, trained with K-fold CV.

Importing the package selects Keras 2 (tf-keras) before TensorFlow is imported anywhere, because
keras-bert and keras-self-attention are Keras 2 libraries.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # TensorFlow picks Keras 3 or tf-keras lazily and keeps its choice; once imported without the
    # variable, parts of it may already be bound to Keras 3 and keras-bert would mix the two.
    raise ImportError(
        "import core before tensorflow (or set TF_USE_LEGACY_KERAS=1 in the environment): "
        "keras-bert and keras-self-attention need tf-keras, which TensorFlow selects at import"
    )
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Quiet TensorFlow's C++ start-up banner; real errors still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "ipykernel.kernelapp" in sys.modules:  # a notebook kernel: TensorFlow loads now, minus the
    # start-up lines that variable misses, which ipykernel would copy into the notebook
    from core.noise import quiet_kernel

    quiet_kernel()

__version__ = "0.1.0"
