"""The screen analysis: the engine's rows of frames (and nuclei) turned into wells, plates, genes, hits and a report.

The modules in the order of the data, each importing only modules before it (an import-linter contract of
``pyproject.toml``, run by ``tests/test_layers.py``):

- :mod:`~nucleiscreen.engine.screen.layout`: the plate map;
- :mod:`~nucleiscreen.engine.screen.wells`: frames to wells;
- :mod:`~nucleiscreen.engine.screen.plates`: wells normalized to their plate's reference wells;
- :mod:`~nucleiscreen.engine.screen.qc`: frame QC; plate QC and Z′, over the normalized wells;
- :mod:`~nucleiscreen.engine.screen.rules`: hit rules as data;
- :mod:`~nucleiscreen.engine.screen.genes`: wells to genes;
- :mod:`~nucleiscreen.engine.screen.hits`: the hits, the control summary;
- :mod:`~nucleiscreen.engine.screen.report`: the report page, tables as text;
- :mod:`~nucleiscreen.engine.screen.analyze`: all of them on a run folder.
"""
