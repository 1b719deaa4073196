"""Segmentation backends behind one interface (:class:`~.base.PromptSegmenter`)."""
