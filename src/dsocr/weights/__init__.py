"""Reading, analysing and converting checkpoints."""
