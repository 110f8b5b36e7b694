"""The two halves of publisher.py: upload (images in as requests) and download (results out as folders)."""
