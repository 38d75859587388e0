"""The runtime layer: every model tower runs on ``torch`` (the reference), ONNX Runtime or OpenVINO.

A backend describes its towers as :class:`~app.runtime.source.TowerSource` objects (input/output signature,
weights fingerprint, a lazy torch-module builder, probe inputs);
:meth:`~app.runtime.towers.RuntimeContext.tower` picks the runtime (``auto``, :mod:`app.runtime.auto`,
measures which one is fastest while passing the parity check of :mod:`app.runtime.parity`), exports once
to the on-disk :class:`~app.runtime.cache.ExportCache` and hands back a
:class:`~app.runtime.executors.TowerExecutor` that takes and returns numpy arrays. The design follows
infinity / text-embeddings-inference: the model interface is independent of the executor, each backend
declares what it can run on, a factory picks.

Torch is imported only to export, for the torch runtime, and for training: with an ONNX Runtime or
OpenVINO runtime and a warm cache the request path never imports it.
"""
