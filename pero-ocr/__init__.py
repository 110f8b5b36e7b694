"""Training scripts of the bundled line-OCR model, installed as `pero_worker.training` (pyproject package-dir).

Run them as `python pero-ocr/<script>.py`; pero-ocr/README.md says how the model was made.
"""
