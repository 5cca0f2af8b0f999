"""The review queue: low-confidence predictions captured for labelling, kept with their images."""
