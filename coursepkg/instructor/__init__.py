"""The instructor's tools; ``python -m coursepkg`` is their command line.

- :mod:`coursepkg.instructor.generator`  exercises from solutions, the notebooks' install cell, execute in place
- :mod:`coursepkg.instructor.batch`      batch grading of a folder of submissions into a CSV
"""
