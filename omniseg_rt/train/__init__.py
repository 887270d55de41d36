"""[torch] Training from partially labelled patches (the dataset module needs no torch).

Modules: ``dataset`` (discovery, split), ``sampler``, ``losses``, ``augment`` (kornia),
``trainer`` (:func:`train`), ``checkpoints``. Evaluation of any model form is ``omniseg_rt.evaluate``.
"""
