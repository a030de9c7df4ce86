"""Exercise checks, one module per chapter (``chNN_slug.py``), each registering its checks with
:func:`coursepkg.grading.register` and comparing against that chapter's reference code."""
