"""Benchmarks of napari-sparse-unet: each module a command, run from the repository root with the
package installed (``pip install -e .``)::

    python -m benchmarks.sparse_accuracy --plan

They write their figures to ``RESULTS.md`` (``report.write_section``).  Shared code lives in
:mod:`.protocol` (the sparse-annotation protocol and Dice), :mod:`.report` (machine summary,
sections of RESULTS.md) and :mod:`.random_forest` (the forest on ilastik features); no
benchmark imports another.
"""
