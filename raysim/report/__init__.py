"""Reading runs as tables, summaries, figures and the markdown report (pandas and
matplotlib; no torch, no Ray)."""
