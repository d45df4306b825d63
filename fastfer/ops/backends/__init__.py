"""fastfer's op backends: the registry (:mod:`.registry`) and one module per backend, each registering its own
record on import — :mod:`.torch` (reference), :mod:`.triton` (Triton kernels), :mod:`.ext` (C++/CUDA
extension: ``cpu``, ``cuda``). ``fastfer.ops`` imports them; this package's ``__init__`` imports nothing.

(The public table is the function ``fastfer.ops.backends()``; this package is reached by its full name.)
"""
