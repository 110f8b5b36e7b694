"""Model-free page layout analysis (pure numpy/OpenCV, no I/O).

`analyze_page(image)` finds text regions and lines in reading order on a page
image; `to_page_layout(analysis, page_id)` turns the result into a pero-ocr
PageLayout.  `geometry.line_geometry(ink_mask)` is the shared definition of a
line's baseline and heights (training crops must use it too).
"""

from pero_worker.worker.layout.facts import LayoutFacts, read_facts
from pero_worker.worker.layout.geometry import line_geometry, line_polygon
from pero_worker.worker.layout.page import LayoutParams, PageAnalysis, analyze_page, to_page_layout

__all__ = ["LayoutFacts", "read_facts",
           "LayoutParams", "PageAnalysis", "analyze_page", "line_geometry", "line_polygon", "to_page_layout"]
