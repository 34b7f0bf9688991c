"""Cross-cutting infrastructure below models, data, training and tools: errors and their exit codes, devices
and precisions, distributed set-up, logging, atomic file writes, and the seed hash.

Nothing here imports the rest of pitvit; every other package may import it.
"""
