"""The tools behind the command line: eval, predict, export, benchmark, convert, demo, plot, model statistics.

Each returns results (or logs notes through ``logging``) and raises :mod:`pitvit.utils.errors` types for what a
user can get wrong; printing is left to :mod:`pitvit.cli`.
"""
