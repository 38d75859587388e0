"""Multimodal classifiers with failure detection (ACR, arXiv 2603.02200; Feature Mixing, arXiv 2505.16985).

Library: ``specs`` (model description), ``encoders`` (registry), ``model`` (late fusion), ``losses`` and
``synthesis`` (ACL, MFS, Feature Mixing, NP-Mix-style reference), ``objective`` (the switchable total loss),
``train`` (deterministic loop), ``checkpoint`` (safetensors + JSON), ``pipeline`` (dataset → checkpoint).
Data: ``feature_dataset`` (the feature-file format), ``av_digits`` (the reproducible benchmark),
``audio`` and ``preprocessing`` (request payload → model input). Evaluation: ``evaluate``, ``ablation``.
Serving: ``service``. Commands: ``cli``.
"""
