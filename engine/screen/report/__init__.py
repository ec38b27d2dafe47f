"""The screen report: one self-contained HTML page (inline CSS, SVG and JPEG data URIs; no script, nothing fetched).

Sections, in the order a screener reads them: a summary; the hit table; for each hit a few of its frames, each
next to a reference (OTP) frame of the same plate, with the nuclei outlined when the run saved label images; the
count-FC vs area-FC scatter of genes with the hits labelled (the paper's Fig. 4, log2 axes, the rules'
thresholds dashed); plate QC (Z′ of every plate across the screen, the plates under the threshold, the QC
table); controls (their summary, the distributions of their wells' fold changes beside the sample wells', and
mock, untransfected and positive controls per plate, the transfection-toxicity check); and a heatmap of the
count fold change of every plate (16 x 24 wells; hover a well for its gene and fold changes).

The modules, from the page down:

- :mod:`~nucleiscreen.engine.screen.report.page`: :func:`write_report`, the page and its tables;
- :mod:`~nucleiscreen.engine.screen.report.frames`: :func:`example_frames` chooses the frames to show (a polars query
  over the image table); :func:`frame_thumbnail` draws one;
- :mod:`~nucleiscreen.engine.screen.report.plots`: the six plots;
- :mod:`~nucleiscreen.engine.screen.report.svg`: the chart kit they are drawn with;
- :mod:`~nucleiscreen.engine.screen.report.text`: values and tables as text (the page's cells, the terminal summary).
"""

from nucleiscreen.engine.screen.report.frames import example_frames, frame_thumbnail
from nucleiscreen.engine.screen.report.page import write_report

__all__ = ["example_frames", "frame_thumbnail", "write_report"]
