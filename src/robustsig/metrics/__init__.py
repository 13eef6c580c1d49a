"""Pure tensor math of the paper's analyses, each with a streaming twin (``update()``/``compute()``):
kurtosis and outlier dimensions, privileged directions and pruning, effective robustness, concept AP, CKA.
No I/O and no model code: the same functions serve in-memory arrays, memory-mapped stores and batch streams."""
