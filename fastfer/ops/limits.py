"""Limits every op and backend shares (one copy; docs/design.md §2)."""

#: Largest head dimension the fused attention kernels take (registers / shared memory per tile); the
#: reference has no limit but the ops validate against this one so every backend accepts the same calls.
MAX_HEAD_DIM = 256
