"""The review queue: low-confidence predictions captured for labelling (issue 15)."""
