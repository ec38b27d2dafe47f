"""The screen analysis: the engine's rows of frames (and nuclei) turned into wells, plates, genes, hits and a report.

The modules in the order of the data, each importing only modules before it: :mod:`~nucleiscreen.engine.screen.layout`
(the plate map),
:mod:`~nucleiscreen.engine.screen.wells`, :mod:`~nucleiscreen.engine.screen.plates`,
:mod:`~nucleiscreen.engine.screen.qc` (frame QC; plate QC and Z′, over the normalized wells),
:mod:`~nucleiscreen.engine.screen.rules` (hit rules as data), :mod:`~nucleiscreen.engine.screen.genes`,
:mod:`~nucleiscreen.engine.screen.hits`, :mod:`~nucleiscreen.engine.screen.report`; and
:mod:`~nucleiscreen.engine.screen.analyze`, which runs them on a run folder.
"""
